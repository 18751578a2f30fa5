"""The BDD-OIA samples paper B's two stages see: a split of this run (kit.data) and the frames a
stage-1 or stage-2 prompt shows, the last `rloo.frames` of each clip."""
from __future__ import annotations

from typing import Mapping

from kit.data import load_bdd_split


def load_samples(data: Mapping, run_dir, split: str, cap: int | None = None) -> list:
    """The samples of a split (`data`: the profile's `data:` section; `cap`: a stage's own cap)."""
    return load_bdd_split(data, run_dir, split, cap).samples


def frame_paths_of(sample, frames: int) -> list:
    """The frames a stage-1/stage-2 prompt shows: the last `frames` (`rloo.frames`) of the clip (paths)."""
    return list(sample.frame_paths)[-int(frames):]


def frames_of(sample, frames: int) -> list:
    """Those frames as PIL images (generation loads them per chunk)."""
    return sample.load_images()[-int(frames):]
