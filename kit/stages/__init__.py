"""Stages: plain functions `(params, run_dir) -> dict` that the notebooks call.

The registry lets `kit stage NAME` (and `accelerate launch -m kit.cli stage NAME` on several GPUs)
run one stage without a notebook.
"""
from __future__ import annotations

import importlib
from typing import Callable

STAGE_FUNCTIONS = {
    "prepare_data": "kit.stages.prepare_data:run_prepare_data",
    "prepare_clip": "kit.stages.prepare_clip:run_prepare_clip",
    "prepare_vlm": "kit.stages.prepare_vlm:run_prepare_vlm",
    "clip_finetune": "kit.stages.clip_finetune:run_clip_finetune",
    "direct": "kit.stages.sft_baseline:run_direct",
    "sft_baseline": "kit.stages.sft_baseline:run_sft_baseline",
    "rloo": "kit.stages.rloo:run_rloo",
    "action_sft": "kit.stages.action_sft:run_action_sft",
    "evaluate": "kit.report:run_evaluate",
    "synthesis": "kit.stages.synthesis:run_synthesis",
    "coda_direct": "kit.stages.coda:run_coda_direct",
    "coda_sft": "kit.stages.coda:run_coda_sft",
    "coda_sft_synth": "kit.stages.coda:run_coda_sft_synth",
    "spin": "kit.stages.spin:run_spin_all",
    "coda_evaluate": "kit.stages.coda_evaluate:run_coda_evaluate",
}


# Not split over processes: under `accelerate launch` the main process runs these alone (the toy
# world's rendering, the report and the battles are cheap, or wait on an API with its own concurrency)
ON_MAIN = {"prepare_data", "evaluate", "coda_evaluate"}


def run_stage(name: str, P, run_dir):
    """Stage `name` on (params, run_dir) in this process; under several processes every process calls
    this (kit.dist): the stage splits its work, or the main process runs it alone (ON_MAIN)."""
    from kit import dist

    fn = stage_function(name)
    out = dist.on_main(fn, P, run_dir) if name in ON_MAIN else fn(P, run_dir)
    dist.wait()
    return out


def stage_function(name: str) -> Callable:
    if name not in STAGE_FUNCTIONS:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGE_FUNCTIONS)}")
    module, fn = STAGE_FUNCTIONS[name].split(":")
    return getattr(importlib.import_module(module), fn)
