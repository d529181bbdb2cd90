"""Metric values read back through the registry's public API (never a metric's private
``_value``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from infra.metrics import Metrics


def sample(metrics: Metrics | CollectorRegistry, name: str, **labels: str) -> float:
    """The value of sample ``name`` (the exposition's name: ``..._total`` for a counter)
    with exactly ``labels``.

    Raises:
        AssertionError: the registry holds no such sample.
    """
    registry = metrics.registry if isinstance(metrics, Metrics) else metrics
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels or ''} in the registry"
    return value
