"""Regenerate checked-in artefacts derived from the Structs: ``python -m schemas.generate``."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.events import json_schema

SCHEMA_PATH = Path(__file__).resolve().parent / "audit_event.schema.json"


def render() -> str:
    """The JSON Schema file's exact text."""
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main() -> None:
    """Write the JSON Schema next to this module."""
    SCHEMA_PATH.write_text(render())
    print(f"wrote {SCHEMA_PATH}")


if __name__ == "__main__":
    main()
