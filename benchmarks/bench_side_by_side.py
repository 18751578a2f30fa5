"""`kit run` with its stages side by side against one after another, in one run of this benchmark.

Both legs run the same notebooks with one thread per process, each in a fresh run folder:
- `one_after_another`: `OMP_NUM_THREADS=1 kit run --jobs 1`, every stage inside its notebook's kernel;
- `side_by_side`: `OMP_NUM_THREADS=1 kit run --jobs N` (N = the cores, at most kit.runner.AUTO_JOBS):
  the stages as N processes of one thread each, then the notebooks, which find their results.
`speedup` = seconds(one after another) / seconds(side by side); at most N, less by the part that waits
on one chain of stages (the critical path) and by the notebooks' own work. `same_numbers` compares every
number of the two metrics.json files (times, paths and reuse flags aside): the same threads per process
must give the same numbers, whichever order the stages ran in. The per-stage and per-notebook seconds of
both legs are kept (manifest.json), so the table says where the time goes.

    python -m benchmarks.bench_side_by_side            # the end-to-end test's smaller world (~15 min here)
    python -m benchmarks.bench_side_by_side --full     # the tiny profile as `make run` runs it (~30 min)

Writes benchmarks/results/bench_side_by_side.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the end-to-end test's world (tests/test_pipeline_e2e.py): every stage of both tracks, smaller
SMALL = {"data.toy.splits": {"train": 400, "val": 50, "test": 100},
         "data.toy.coda_splits": {"Train": 150, "Val": 10, "Test": 24, "Mini": 4}, "data.toy.coda_unlabeled": 120,
         "clip_finetune.splits": {"train": 700, "val": 100, "test": 200}, "clip_finetune.epochs": 10,
         "clip_finetune.compare_targets": False, "rloo.describe_train_samples": 200,
         "synth.max_images": 120, "spin.rounds": 2, "spin.prompts_per_round": 40}
# not numbers of the method: when, where, and whether a call found its result made before
SKIP = ("seconds", "figures", "checkpoint", "work_dir", "path", "dir", "predictions", "descriptions", "reused",
        "resumed", "skipped", "source", "started", "finished", "log")


def leaves(x, prefix: str = ""):
    """(dotted key, value) for every scalar of a JSON value."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, x


def numbers(metrics_path: Path) -> dict:
    data = json.loads(metrics_path.read_text())
    return {k: v for k, v in leaves(data) if not any(s in k.lower() for s in SKIP)}


def leg(rd: Path, jobs: int, sets: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "kit.cli", "run", "--profile", "tiny", "--run-dir", str(rd), "--jobs", str(jobs),
           *sets]
    t0 = time.time()
    with open(rd.parent / f"{rd.name}.log", "w") as log:
        rc = subprocess.run(cmd, env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT).returncode
    secs = round(time.time() - t0, 1)
    if rc != 0:
        raise RuntimeError(f"kit run --jobs {jobs} failed (exit {rc}); its log: {rd.parent / f'{rd.name}.log'}")
    man = json.loads((rd / "manifest.json").read_text())
    side = man.get("side_by_side") or {}
    return {"seconds": secs, "jobs": jobs, "threads_per_process": 1,
            "notebooks": {k: {"seconds": v.get("seconds"), "executed_seconds": v.get("executed_seconds")}
                          for k, v in man["stages"].items()},
            "stages": {k: v.get("seconds") for k, v in (side.get("stages") or {}).items()}}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="the tiny profile as make run runs it (default: smaller)")
    a = ap.parse_args(argv if argv is not None else [])
    from kit.runner import AUTO_JOBS, machine, threads_available

    jobs = max(2, min(threads_available(), AUTO_JOBS))
    sets = [] if a.full else [f"--set={k}={json.dumps(v)}" for k, v in SMALL.items()]
    with tempfile.TemporaryDirectory(prefix="kit-bench-sbs-") as tmp:
        seq = leg(Path(tmp) / "one_after_another", 1, sets)
        par = leg(Path(tmp) / "side_by_side", jobs, sets)
        a_num = numbers(Path(tmp) / "one_after_another" / "metrics.json")
        b_num = numbers(Path(tmp) / "side_by_side" / "metrics.json")
    differ = sorted(k for k in set(a_num) | set(b_num) if a_num.get(k) != b_num.get(k))
    out = {"what": "kit run, both tracks: stages side by side vs one after another, one thread per process",
           "size": "tiny profile" if a.full else "the end-to-end test's world (tests/test_pipeline_e2e.py)",
           "machine": {k: v for k, v in machine().items() if k != "threads"},
           "one_after_another": seq, "side_by_side": par,
           "speedup": round(seq["seconds"] / par["seconds"], 3), "ideal_speedup": jobs,
           "numbers_compared": len(a_num), "numbers_differing": len(differ), "differing": differ[:20],
           "same_numbers": not differ}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_side_by_side.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
