"""Stages: plain functions `(params, run_dir) -> dict` that the notebooks call, listed in the stage
table (kit.pipeline.STAGES), which lets `kit stage NAME` (and `accelerate launch -m kit.cli stage NAME`
on several GPUs) run one stage without a notebook.
"""
from __future__ import annotations

import importlib
from typing import Callable

from kit import dist, pipeline


def run_stage(name: str, P, run_dir):
    """Stage `name` on (params, run_dir) in this process; under several processes every process calls
    this (kit.dist): the stage splits its work, or the main process runs it alone (its row's on_main)."""
    fn = stage_function(name)
    out = dist.on_main(fn, P, run_dir) if pipeline.stage(name).on_main else fn(P, run_dir)
    dist.wait()
    return out


def stage_function(name: str) -> Callable:
    module, fn = pipeline.stage(name).function.split(":")
    return getattr(importlib.import_module(module), fn)
