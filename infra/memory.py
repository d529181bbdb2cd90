"""glibc's malloc thresholds, fixed for a process that builds multi-megabyte buffers per
batch.

A flush builds its binary COPY data (about 4 MB per 5,000 events) and asyncpg copies it
once more into its protocol buffer. glibc serves an allocation above its *mmap
threshold* with freshly mapped pages (each first touch a page fault and a page cleared
by the kernel) and unmaps it on free; it raises that threshold only when such a block is
freed, and gives back the top of the heap beyond the *trim threshold* (twice the other).
Where that settles depends on the order of a process's allocations: in a 300,000-event
drain one version of the COPY builder left the worker with ~38,000 page faults and
another, allocating the same sizes in another order, ~79,000. Fixed thresholds make the
per-batch buffers come from the heap and stay there: ~33,000 with either.

An operator's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment
settings win: nothing is changed then. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks below it
# come from the heap.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept for the next batches (per process).
TRIM_THRESHOLD = 64 << 20
_OPERATOR_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_malloc() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (idempotent).

    Returns:
        True when set; False when left alone (not glibc, or the operator set them).
    """
    if any(name in os.environ for name in _OPERATOR_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 (glibc only)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    done = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and done
    if not done:
        log.debug("malloc thresholds not set (mallopt refused them)")
    return done
