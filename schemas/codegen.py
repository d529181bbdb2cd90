"""Generate the protobuf and gRPC modules from ``schemas/audit/v1/audit.proto``.

    python -m schemas.codegen          # rewrite schemas/audit/v1/audit_pb2*.py(i)

The output is checked in; a test regenerates it into a temporary folder and fails when
the checked-in files are stale. Needs grpcio-tools (a dev dependency).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PROTO = "audit/v1/audit.proto"
OUTPUTS = ("audit_pb2.py", "audit_pb2.pyi", "audit_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, str]:
    """Run protoc into ``out_dir``; return {file name: text} with imports made absolute."""
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "protoc", f"-I{ROOT}", f"-I{well_known}", f"--python_out={out_dir}",
        f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(ROOT / PROTO),
    ]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    texts = {}
    for name in OUTPUTS:
        text = (out_dir / "audit" / "v1" / name).read_text()
        texts[name] = text.replace("from audit.v1 import", "from schemas.audit.v1 import")
    return texts


def main() -> None:
    """Regenerate the checked-in modules."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in generate(Path(tmp)).items():
            (ROOT / "audit" / "v1" / name).write_text(text)
            print(f"wrote schemas/audit/v1/{name}", file=sys.stderr)


if __name__ == "__main__":
    main()
