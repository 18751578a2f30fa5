"""What every notebook does after its parameters cell: resolve the profile, seed, find the run."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Mapping

from kit import params as kparams
from kit import quiet, runs


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(profile: str = "tiny", run_dir: str = "runs/tiny", overrides: Mapping | list[str] | None = None,
          stage: str | None = None) -> tuple[dict, Path]:
    """Resolve the profile (with overrides) and the run directory; seed the RNGs; silence the library
    messages kit.quiet lists (expected on a CPU, not about the run).

    Returns (params, run_dir). The notebook's stage folder is created if `stage` is given.
    """
    quiet.known_messages()
    P = kparams.load_profile(profile, overrides or {})
    rd = runs.ensure_run_dir(run_dir)
    if stage:
        runs.stage_dir(rd, stage)
    seed_everything(int(P["seed"]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return P, rd


def show_figure(path: str | os.PathLike):
    """Display a saved PNG inline (the figure on disk is the one the notebook shows)."""
    from IPython.display import Image, display

    display(Image(filename=str(path)))
