"""The judge a profile's `judge:` section names: `make_judge(P["judge"], run_dir)`."""
from __future__ import annotations

from typing import Mapping

from kit.judge.base import Judge
from kit.judge.cache import DiskCache
from kit.judge.prompts import load_prompts
from kit.judge.rubric import RubricJudge
from kit.runs import resolve_run_dir


def make_judge(cfg: Mapping, run_dir=None) -> Judge:
    """The judge the profile's `judge:` section names (backend rubric | openai)."""
    backend = str(cfg.get("backend") or "rubric")
    prompts = load_prompts(cfg.get("prompts_dir"))
    if backend == "rubric":
        return RubricJudge(prompts=prompts)
    if backend == "openai":
        from kit.judge.openai_judge import OpenAIJudge  # the openai client loads only when a profile asks for it

        cache_dir = cfg.get("cache_dir")
        if not cache_dir:
            if run_dir is None:
                raise ValueError("params judge.cache_dir: expected a folder for the judge's cache (or a run directory)")
            cache_dir = resolve_run_dir(run_dir) / "judge_cache"
        return OpenAIJudge(base_url=cfg.get("base_url"), model=cfg.get("model"), prompts=prompts,
                           cache=DiskCache(cache_dir), concurrency=int(cfg.get("concurrency") or 8),
                           reask=int(cfg.get("reask", 2)), timeout=float(cfg.get("timeout") or 60),
                           max_retries=int(cfg.get("max_retries", 2)), max_tokens=cfg.get("max_tokens"),
                           deadline_s=cfg.get("deadline_s"), max_consecutive_failures=cfg.get("max_consecutive_failures"))
    raise ValueError(f"params judge.backend: expected 'rubric' or 'openai', got {backend!r}")
