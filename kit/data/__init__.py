"""Datasets: the real BDD-OIA and CODA-LM layouts and the toy world
that writes those same layouts, so one loader serves a user's download and the offline default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from kit import runs


class DataError(ValueError):
    """Malformed dataset input; the message names the file, the field and what was expected."""


def _root_from(data: Mapping, run_dir, key: str, metric_key: str) -> Path:
    given = data.get(key)
    if given:
        return Path(given).expanduser().resolve()
    ds = (runs.read_metrics(run_dir).get("prepare") or {}).get("datasets") or {}
    if ds.get(metric_key):
        return Path(ds[metric_key])
    raise FileNotFoundError(
        f"{runs.resolve_run_dir(run_dir) / 'metrics.json'}: no prepare.datasets.{metric_key} and the profile's "
        f"data.{key} is null; run notebook 00 (prepare) for this run directory first, or set data.{key}")


def bdd_oia_root(data: Mapping, run_dir) -> Path:
    """The BDD-OIA root: the `data:` section's `bdd_oia_root`, else the toy data notebook 00 generated."""
    return _root_from(data, run_dir, "bdd_oia_root", "bdd_oia_root")


def coda_lm_root(data: Mapping, run_dir) -> Path:
    """The CODA-LM root: the `data:` section's `coda_lm_root`, else the toy data notebook 00 generated."""
    return _root_from(data, run_dir, "coda_lm_root", "coda_lm_root")


def load_bdd_split(data: Mapping, run_dir, split: str, cap: int | None = None):
    """This run's BDD-OIA split (`data` is the profile's `data:` section), capped by its
    `max_samples[split]` and a stage's own cap (the smaller wins). An empty split is an error:
    every stage downstream needs samples."""
    from kit.data.bdd_oia import load_split  # here, not above: bdd_oia imports DataError from this file

    caps = [c for c in ((data.get("max_samples") or {}).get(split), cap) if c]
    s = load_split(bdd_oia_root(data, run_dir), split, max_samples=min(caps) if caps else None)
    if not s.samples:
        raise DataError(f"{s.root}: BDD-OIA split '{split}' has no usable samples (stats: {s.stats}); "
                        "expected images under lastframe/data and annotations in the split's JSON files")
    return s


__all__ = ["DataError", "bdd_oia_root", "coda_lm_root", "load_bdd_split"]
