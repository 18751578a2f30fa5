"""The BDD-OIA samples paper B's two stages see: a split of this run (kit.data) and the frames a
stage-1 or stage-2 prompt shows, the last `rloo.frames` of each clip."""
from __future__ import annotations

from typing import Mapping

from kit.data import load_bdd_split


def load_samples(P: Mapping, run_dir, split: str, cap: int | None = None) -> list:
    return load_bdd_split(P, run_dir, split, cap).samples


def frame_paths_of(sample, P: Mapping) -> list:
    """The frames a stage-1/stage-2 prompt shows: the last `rloo.frames` of the clip (paths)."""
    return list(sample.frame_paths)[-int(P["rloo"]["frames"]):]


def frames_of(sample, P: Mapping) -> list:
    """Those frames as PIL images (generation loads them per chunk)."""
    return sample.load_images()[-int(P["rloo"]["frames"]):]
