"""Offline verification speed: ``schemas.bundle.verify`` over a synthetic bundle.

Builds a bundle of ``--events`` events of about 640 canonical bytes each (chained, a
signed checkpoint every 100,000 events and at the end), then times verification from the
file's bytes (decode, chain hashes, Merkle tree, signatures). Target: >= 200,000 events/s.

    python -m benchmarks.verify_bundle --events 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.common import emit
from schemas import bundle, tlog


def build(n: int) -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    name, origin = "bench.local", "bench.local/acme"
    verifier = tlog.verifier_key(name, key.public_key().public_bytes_raw())
    pad = "x" * 380
    prev, tree = bytes(32), tlog.Frontier()
    events, notes = [], []
    for seq in range(1, n + 1):
        canonical = json.dumps({"action": "user.login", "description": pad, "seq_hint": seq,
                                "tenant_id": "acme", "id": f"{seq:032x}"},
                               separators=(",", ":"), sort_keys=True)  # fmt: skip
        h = hashlib.sha256(prev + canonical.encode()).digest()
        tree.append(tlog.leaf_hash(h))
        events.append(bundle.BundleEvent(seq, h.hex(), canonical))
        prev = h
        if seq % 100_000 == 0 or seq == n:
            notes.append(tlog.sign_note(tlog.Checkpoint(origin, seq, tree.root()).text(), name,
                                        key))  # fmt: skip
    manifest = bundle.Manifest(tenant_id="acme", origin=origin, from_seq=1, to_seq=n, events=n,
                               created_at="2026-11-30T00:00:00Z")  # fmt: skip
    b = bundle.Bundle(format=bundle.FORMAT, manifest=manifest, public_keys=[verifier],
                      prev_hash=bytes(32).hex(), frontier=[], checkpoints=notes,
                      events=events)  # fmt: skip
    return bundle.encode(b), verifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    data, verifier = build(args.events)
    rates = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        report = bundle.verify(data, [verifier])
        elapsed = time.perf_counter() - started
        assert report.status == "intact" and report.events == args.events, report
        rates.append(args.events / elapsed)
    median = round(statistics.median(rates))
    emit({"verify_bundle": {
        "events": args.events, "bytes": len(data), "rounds": args.rounds,
        "events_per_s": [round(r) for r in rates], "median_events_per_s": median,
    }}, {"verify_bundle.median_events_per_s": "no verification timed"})  # fmt: skip


if __name__ == "__main__":
    main()
