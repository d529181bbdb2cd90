"""The per-batch hot path of the pipeline, compiled when it could be built, else pure Python.

As asyncpg keeps its protocol in a compiled core under a plain Python API, the three
batch functions the worker calls per event live in ``pipeline/_fastpath.c`` when the
extension was built at install time (``setup.py``; a C compiler is needed), and in plain
Python (``pipeline.stages``, ``pipeline.chain``, ``pipeline.copy_binary``) otherwise.
The pure path is also the oracle: both give byte-identical results for every input
(``tests/unit/test_fastpath.py`` runs them side by side on hostile input).

- :func:`prepare_batch`: messages in; per message a ``Valid`` (keys, canonical bytes,
  COPY row) or a ``Dead`` (reason, message, field). The compiled path decodes with the
  same msgspec decoders and hands any message it does not fully handle itself (invalid,
  unknown tenant or action, lowerCamelCase names, headers that name the id, times out of
  range, ...) to the pure :func:`pipeline.stages.process`, so every dead letter's reason
  and text come from one place.
- :func:`defer`: messages in; per message a ``Pending`` (its tenant read off the payload's
  first member: its preparing waits for the flush that takes it) or, when it may not
  wait, what :func:`prepare_batch` gives (``pipeline.stages.defer_batch``).
- :func:`claims_copy`: binary COPY data of the batch's ``audit.event_ids`` claims.
- :func:`chain_copy`: per-tenant ``seq`` and SHA-256 chain after the locked heads, and the
  binary COPY data of ``audit.events`` per month partition.
- :data:`scan_msgs` (compiled only; ``pipeline.nats_fast``): the JetStream source's
  ``MSG`` frames read off the NATS connection into ``Message`` objects, instead of
  nats-py's per-message parser and callbacks.

``AUDIT_PURE_PYTHON=1`` selects the pure path even when the extension is there (tests
and CI run both). :data:`KIND` says which one runs; the worker logs it at start.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import ModuleType
from typing import Any, Final

from pipeline import chain
from pipeline.chain import Prepared
from pipeline.stages import (
    DEFAULT_LIMITS,
    Dead,
    Limits,
    Message,
    Pending,
    Valid,
    defer_batch,
    event_id_for,
    micros,
    occurred_bounds,
    process,
)
from schemas.events import KNOWN_ACTIONS, KNOWN_NAMES_DECODER, KNOWN_TENANTS, SORTED_ENCODER

log = logging.getLogger(__name__)

PURE_ENV: Final = "AUDIT_PURE_PYTHON"


def _build() -> tuple[ModuleType | None, str]:
    """The compiled module, configured (None when it is not built), and why not."""
    try:
        from pipeline import _fastpath  # type: ignore[attr-defined]
    except ImportError as exc:
        return None, str(exc)
    _fastpath.configure(KNOWN_NAMES_DECODER.decode, SORTED_ENCODER.encode, KNOWN_TENANTS,
                        KNOWN_ACTIONS, Valid, Prepared, process, event_id_for,
                        hashlib.sha256)  # fmt: skip
    _fastpath.configure_nats(Message)
    _fastpath.configure_defer(Pending)
    return _fastpath, ""


#: The compiled module when it is built (whichever path runs; tests compare both).
BUILT, _NOT_BUILT = _build()


def _choose() -> tuple[ModuleType | None, str]:
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"pure Python ({PURE_ENV} is set)"
    if BUILT is None:
        return None, (f"pure Python: the C extension pipeline._fastpath is not built "
                      f"({_NOT_BUILT}); reinstall with a C compiler present to build "
                      "it")  # fmt: skip
    return BUILT, f"compiled: pipeline._fastpath (SHA-256 by {BUILT.SHA256})"


#: The compiled module when it runs (None: the pure path runs), and which path, in words.
COMPILED, KIND = _choose()


def pure_prepare_batch(msgs: Sequence[Message], now: datetime,
                       limits: Limits = DEFAULT_LIMITS) -> list[Valid | Dead]:  # fmt: skip
    """:func:`pipeline.stages.process` of each message (the oracle)."""
    return [process(m, now, limits) for m in msgs]


pure_defer_batch = defer_batch
pure_claims_copy = chain.claims_copy
pure_chain_copy = chain.chain_copy


def compiled_prepare_batch(msgs: Sequence[Message], now: datetime,
                           limits: Limits = DEFAULT_LIMITS) -> list[Valid | Dead]:  # fmt: skip
    """:func:`pure_prepare_batch`, compiled (the extension must be built)."""
    assert BUILT is not None
    low, high = occurred_bounds(limits)
    return BUILT.prepare_batch(msgs, now, limits, micros(now), low, high, limits.subject)


def compiled_defer_batch(
    msgs: Sequence[Message], now: datetime, limits: Limits = DEFAULT_LIMITS
) -> list[Pending | Valid | Dead]:
    """:func:`pure_defer_batch`, compiled: the tenant guessed in C, the messages that may not
    wait prepared at once by :func:`compiled_prepare_batch`."""
    assert BUILT is not None
    items, eager = BUILT.defer_split(msgs)
    if eager:
        done = compiled_prepare_batch([msgs[i] for i in eager], now, limits)
        for i, item in zip(eager, done, strict=True):
            items[i] = item
    return items


def compiled_claims_copy(items: Sequence[Prepared]) -> bytes:
    """:func:`pure_claims_copy`, compiled."""
    assert BUILT is not None
    return BUILT.claims_copy(items)


def compiled_chain_copy(items: Sequence[Prepared], heads: Mapping[str, tuple[int, bytes]]
                        ) -> tuple[dict[int, bytes], dict[str, tuple[int, bytes]]]:  # fmt: skip
    """:func:`pure_chain_copy`, compiled."""
    assert BUILT is not None
    return BUILT.chain_copy(items, heads)


ScanMsgs = Callable[[bytearray, dict[int, Any]], tuple[int, list[tuple[int, list[Any], int]], int]]
#: The compiled MSG frame scanner when the compiled path runs (None: nats-py's parser).
scan_msgs: ScanMsgs | None = COMPILED.scan_msgs if COMPILED is not None else None

if COMPILED is not None:
    prepare_batch = compiled_prepare_batch
    defer = compiled_defer_batch
    claims_copy = compiled_claims_copy
    chain_copy = compiled_chain_copy
else:
    prepare_batch = pure_prepare_batch
    defer = pure_defer_batch
    claims_copy = pure_claims_copy
    chain_copy = pure_chain_copy


def log_choice() -> None:
    """Say at start which path runs (a missing extension is worth a warning: it costs CPU)."""
    if COMPILED is None:
        log.warning("pipeline hot path: %s", KIND)
    else:
        log.info("pipeline hot path: %s", KIND)
