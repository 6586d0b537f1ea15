"""What a finished job records about itself beside its outputs: the versions of the packages
that ran it, and Beam's counters (``segbeam run`` and ``segbeam shard``)."""

from __future__ import annotations

from importlib import metadata
from typing import Optional

_PACKAGES = ("segbeam", "apache-beam", "keras", "tensorflow", "tensorflow-cpu", "jax", "torch",
             "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "pillow", "pyarrow",
             "pydensecrf2", "dask", "distributed")


def package_versions() -> dict:
    """Installed versions of the packages a run can involve (absent ones left out)."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def beam_counters(result) -> Optional[dict]:
    """Beam's counters of a finished run (e.g. RunInference's ``num_inferences``), summed over
    steps; None where the runner reports no metrics."""
    try:
        counters = result.metrics().query()["counters"]
    except (NotImplementedError, AttributeError, KeyError):
        return None
    totals: dict[str, int] = {}
    for counter in counters:
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(counter.committed or 0)
    return dict(sorted(totals.items()))
