"""The tamper-evident ledger: chain verification, signed checkpoints and their tiles and
witness copy, log verification, proofs and bundles, retention drops and archives.

It reads what ingest (``pipeline``) wrote and never imports it (an import-linter contract).
"""
