"""`kit sweep`: the same notebooks over seeds and a grid of settings, one run directory per
combination, and the spread of every headline number.

    kit sweep --profile tiny --seeds 0,1,2 [--grid rloo.beta=0,0.02,0.05 ...] [--only 03,05] [--track A]
              [--sweep-dir runs/sweeps/NAME] [--jobs N] [--set KEY=VALUE ...]
    kit sweep --summarize runs/sweeps/NAME

Each combination is one `kit run` (papermill, as everywhere) in `<sweep dir>/<settings>/`, in a
process of its own, so a failure is reported and the others go on, and `--jobs N` runs N of them
side by side with `cores / N` threads each (the BLAS pools would otherwise fight over the cores).
Reuse is `kit run`'s: a rerun skips notebooks done with the same parameters, and inside them
every stage reuses only what its key matches. `sweep.json` lists the combinations and how each
went; `summary.json`, `summary.md` and `figures/<metric>.png` hold mean, standard deviation, min,
max and n of every headline number per combination (seeds pooled), rebuilt by `--summarize` from
the run directories' metrics.json alone.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence

from kit import runs
from kit.params import load_profile, parse_overrides

SWEEP_FILE = "sweep.json"
# Headline numbers at fixed metrics.json paths: notebook 00's pretrained tiny models, then Track B's
# (the README's "What to expect" table); Track A's are found per model (headline_metrics)
FIXED = {
    "pretrained CLIP retrieval top-1": "prepare.models.clip.retrieval_after.i2t_top1",
    "pretrained VLM caption loss": "prepare.models.vlm.caption_loss_after",
    "CLIP val AUROC": "clip_finetune.val_auroc",
    "CLIP test AUROC": "clip_finetune.test_auroc",
    "CLIP test F1": "clip_finetune.test.f1",
    "pretrained CLIP test AUROC": "clip_finetune.pretrained_test_auroc",
    "Direct action mF1": "direct.eval.action.macro_f1",
    "Direct reason mF1": "direct.eval.reason.macro_f1",
    "SFT action mF1": "sft_baseline.eval.action.macro_f1",
    "SFT reason mF1": "sft_baseline.eval.reason.macro_f1",
    "RLOO reward, first epoch": "rloo.reward_first_epoch",
    "RLOO reward, last epoch": "rloo.reward_last_epoch",
    "held-out CLIP score, base model": "rloo.eval.base_model.clip_score",
    "held-out CLIP score, after RLOO": "rloo.eval.clip_score",
    "specificity, base model": "rloo.eval.base_model.specificity",
    "specificity, after RLOO": "rloo.eval.specificity",
    "stage-2 action mF1": "action_sft.eval.action.macro_f1",
    "A judge validity (Spearman)": "evaluate.coda_lm.judge_validity.spearman",
    "A synthetic / Train QA pairs": "synthesis.card.ratio_to_train",
    "A named-object precision": "synthesis.quality.named_objects.overall.precision",
    "A named-object recall": "synthesis.quality.named_objects.overall.recall",
}
TASK_SHORT = {"general_perception": "general", "region_perception": "region", "driving_suggestion": "driving"}


def _get(d: Any, path: str):
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) else None


def headline_metrics(metrics: Mapping) -> dict[str, float]:
    """The headline numbers a run holds: FIXED's, and Track A's per evaluated model (overall and per
    task on 0-100, the Elo bootstrap median and its 95% interval). A stage the run did not include
    is simply absent."""
    out = {name: v for name, path in FIXED.items() if (v := _get(metrics, path)) is not None}
    elo = ((metrics.get("evaluate") or {}).get("elo") or {}).get("bootstrap") or {}
    for stage, m in metrics.items():
        e = m.get("coda_lm") if isinstance(m, Mapping) else None
        if not (e and e.get("scores") and e.get("name")):
            continue
        n, s = e["name"], e["scores"]
        out[f"A {n}: overall"] = s["overall_100"]
        for t, short in TASK_SHORT.items():
            if s.get(t, {}).get("score_100") is not None:
                out[f"A {n}: {short}"] = s[t]["score_100"]
        if n in elo:
            out[f"A {n}: Elo"] = elo[n]["median"]
            out[f"A {n}: Elo 2.5%"], out[f"A {n}: Elo 97.5%"] = elo[n]["lo"], elo[n]["hi"]
    return out


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`["rloo.beta=0,0.02,0.05"]` -> {"rloo.beta": [0, 0.02, 0.05]} (values read as YAML, like --set)."""
    grid = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"kit sweep --grid {it!r}: expected KEY=V1,V2,..., e.g. rloo.beta=0,0.02")
        key, values = it.split("=", 1)
        grid[key.strip()] = [parse_overrides([f"x={v}"])["x"] for v in values.split(",") if v.strip()]
    return grid


def combinations(seeds: Sequence[int], grid: Mapping[str, Sequence]) -> list[dict]:
    """Every grid point crossed with every seed, as {dotted key: value} with `seed` last."""
    keys = sorted(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        for s in seeds:
            out.append({**dict(zip(keys, values)), "seed": int(s)})
    return out


def combo_name(settings: Mapping) -> str:
    """A run directory's name from its settings, e.g. `rloo.beta=0.02__seed=1`."""
    parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", "__".join(parts))


def _group(settings: Mapping) -> str:
    rest = {k: v for k, v in settings.items() if k != "seed"}
    return combo_name(rest) if rest else "all seeds"


def _run_one(profile: str, run_dir: Path, settings: Mapping, base: Sequence[str], only, track,
             threads: int | None) -> dict:
    """One combination as its own `kit run` process; its log in `<run_dir>/sweep.log`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    report = run_dir / "sweep_report.json"
    report.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "kit.cli", "run", "--profile", profile, "--run-dir", str(run_dir),
           "--report", str(report), *[x for s in base for x in ("--set", s)],
           *[x for k, v in settings.items() for x in ("--set", f"{k}={json.dumps(v)}")]]
    if only:
        cmd += ["--only", ",".join(only)]
    if track:
        cmd += ["--track", track]
    # one job: the threads `kit run` would use (so seed S here equals `kit run --set seed=S`); N jobs: a share each
    env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads),
                                                    "MKL_NUM_THREADS": str(threads)}
    t0 = time.time()
    with open(run_dir / "sweep.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=str(Path(__file__).resolve().parent.parent)).returncode
    res = {"settings": dict(settings), "run_dir": str(run_dir), "seconds": round(time.time() - t0, 1),
           "status": "ok" if rc == 0 else "failed"}
    rep = runs.read_json(report)
    if rep:
        res["notebooks"] = rep.get("stages")
    if rc != 0:
        tail = (run_dir / "sweep.log").read_text(errors="replace").strip().splitlines()[-5:]
        res["error"] = "\n".join(tail)
    return res


def run_sweep(profile: str = "tiny", seeds: Sequence[int] = (0,), grid: Mapping[str, Sequence] | None = None,
              *, only: Sequence[str] | None = None, track: str | None = None, sweep_dir: str | os.PathLike | None = None,
              jobs: int = 1, base: Sequence[str] = ()) -> dict:
    """Run every combination (see the module docstring); returns the sweep record with its summary."""
    grid = dict(grid or {})
    combos = combinations(seeds, grid)
    for c in combos:  # every combination resolves before anything runs: a bad key fails here, naming it
        load_profile(profile, [*base, *(f"{k}={json.dumps(v)}" for k, v in c.items())])
    sd = runs.resolve_run_dir(sweep_dir or f"runs/sweeps/{Path(str(profile)).stem}")
    sd.mkdir(parents=True, exist_ok=True)
    jobs = max(1, int(jobs))
    threads = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    record = {"profile": str(profile), "seeds": [int(s) for s in seeds], "grid": grid, "only": list(only or []) or None,
              "track": track, "base": list(base), "jobs": jobs, "runs": []}
    runs.write_json(sd / SWEEP_FILE, record)

    def one(c):
        name = combo_name(c)
        print(f"kit sweep: {name} ...", flush=True)
        r = _run_one(str(profile), sd / name, c, base, only, track, threads)
        r["name"] = name
        print(f"kit sweep: {name} {r['status']} in {r['seconds']:.0f} s"
              + (f"\n  {r['error'].splitlines()[-1]}" if r.get("error") else ""), flush=True)
        return r

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        record["runs"] = list(pool.map(one, combos))
    runs.write_json(sd / SWEEP_FILE, record)
    record["summary"] = summarize(sd)
    return record


def _stats(xs: Sequence[float]) -> dict:
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "min": min(xs), "max": max(xs), "n": n, "values": list(xs)}


def summarize(sweep_dir: str | os.PathLike) -> dict:
    """summary.json, summary.md and figures/ from the sweep's run directories (files only)."""
    sd = runs.resolve_run_dir(sweep_dir)
    rec = runs.read_json(sd / SWEEP_FILE)
    if not rec:
        raise FileNotFoundError(f"{sd / SWEEP_FILE}: not found; is {sd} a `kit sweep` directory?")
    per_group: dict[str, dict[str, list]] = {}
    seeds_of: dict[str, dict[str, list]] = {}
    failed = []
    for r in rec["runs"]:
        if r["status"] != "ok":
            failed.append({"name": r["name"], "error": r.get("error")})
            continue
        g = _group(r["settings"])
        for k, v in headline_metrics(runs.read_json(Path(r["run_dir"]) / "metrics.json", {}) or {}).items():
            per_group.setdefault(g, {}).setdefault(k, []).append(v)
            seeds_of.setdefault(g, {}).setdefault(k, []).append(r["settings"].get("seed"))
    summary = {"sweep_dir": str(sd), "groups": {g: {k: {**_stats(v), "seeds": seeds_of[g][k]} for k, v in m.items()}
                                                 for g, m in per_group.items()},
               "failed": failed,
               "command": "kit sweep " + " ".join([f"--profile {rec['profile']}",
                                                   "--seeds " + ",".join(map(str, rec["seeds"])),
                                                   *(f"--grid {k}=" + ",".join(map(str, v)) for k, v in rec["grid"].items()),
                                                   *([f"--only {','.join(rec['only'])}"] if rec.get("only") else []),
                                                   *([f"--track {rec['track']}"] if rec.get("track") else [])])}
    runs.write_json(sd / "summary.json", summary)
    runs.atomic_write_text(sd / "summary.md", summary_markdown(summary))
    plot_summary(summary, sd / "figures")
    return summary


def _fmt(x) -> str:
    return "" if x is None else (f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")


def summary_markdown(summary: Mapping) -> str:
    lines = [f"# `{summary['command']}`", ""]
    for g, m in summary["groups"].items():
        lines += [f"## {g}", "", "| metric | mean | sd | min | max | n |", "|---|---|---|---|---|---|"]
        for k, s in m.items():
            lines.append(f"| {k} | {_fmt(s['mean'])} | {_fmt(s['sd'])} | {_fmt(s['min'])} | {_fmt(s['max'])} | {s['n']} |")
        lines.append("")
    if summary["failed"]:
        lines += ["## failed", ""] + [f"- {f['name']}: {(f['error'] or '').splitlines()[-1:] or ''}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def plot_summary(summary: Mapping, out_dir: Path) -> list[Path]:
    """One figure per metric: every seed as a point, the mean and its +-1 sd per combination."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(summary["groups"])
    metrics = sorted({k for m in summary["groups"].values() for k in m})
    paths = []
    for k in metrics:
        fig, ax = plt.subplots(figsize=(max(3.5, 1.4 * len(groups) + 1.5), 3.2))
        for i, g in enumerate(groups):
            s = summary["groups"][g].get(k)
            if not s:
                continue
            ax.scatter([i] * s["n"], s["values"], color="C0", alpha=0.6, zorder=3)
            for x, y, seed in zip([i] * s["n"], s["values"], s["seeds"]):
                ax.annotate(f"s{seed}", (x, y), xytext=(5, 0), textcoords="offset points", fontsize=7)
            ax.errorbar([i - 0.15], [s["mean"]], yerr=[[s["sd"] or 0], [s["sd"] or 0]], fmt="D", color="C3",
                        capsize=4, label="mean +- sd" if i == 0 else None)
        ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 2 else 0, fontsize=8)
        ax.set_title(k, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(runs.save_figure(fig, out_dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', k).strip('_')}.png"))
    return paths
