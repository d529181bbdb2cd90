"""infra.memory: glibc's malloc thresholds fixed, so per-batch buffers stay in the heap."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from infra.memory import tune_malloc

# Rounds of a flush's allocation pattern: a few multi-megabyte buffers, sizes creeping up
# (each batch a little larger than the last: the pattern that keeps glibc's own threshold
# behind), all freed before the next round. Prints the page faults of each round.
_ROUNDS = """
import json, resource, sys
from infra.memory import tune_malloc
tuned = tune_malloc() if sys.argv[1] == "tuned" else None
faults = []
for r in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grow = r * (96 << 10)
    bufs = [bytearray((4 << 20) + grow), bytearray((5 << 20) + grow), bytearray((3 << 20) + grow)]
    del bufs
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": tuned, "faults": faults}))
"""

glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's (mallopt)"
)


def _rounds(mode: str, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _ROUNDS, mode], capture_output=True, text=True, check=True,
        env={**os.environ, **env}, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )  # fmt: skip
    return json.loads(out.stdout)


@glibc_only
def test_tuned_buffers_of_later_batches_reuse_the_heap() -> None:
    """After the first round, a round of fresh multi-megabyte buffers (each a little larger
    than the last) touches almost no new pages: 12 MB of buffers is ~3,000 pages (glibc's
    own thresholds: ~1,400-1,600 new faults in every round here)."""
    got = _rounds("tuned")
    assert got["tuned"] is True
    faults = got["faults"]
    assert isinstance(faults, list)
    assert faults[0] > 2000  # the first round does map its pages (the check can fail)
    assert max(faults[1:]) < 200, faults


@glibc_only
def test_the_operators_own_settings_win() -> None:
    got = _rounds("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert got["tuned"] is False


@glibc_only
def test_tuning_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    assert tune_malloc() is True
    assert tune_malloc() is True
