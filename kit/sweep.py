"""`kit sweep`: the same notebooks over seeds, thread counts and a grid of settings, one run directory
per combination, the spread of every headline number, and the paired comparisons the README states.

    kit sweep --profile tiny --seeds 0,1,2 [--threads 1,2] [--grid rloo.beta=0,0.02,0.05 ...] [--only 03,05]
              [--track A] [--sweep-dir runs/sweeps/NAME] [--jobs N] [--set KEY=VALUE ...] [--expected]
    kit sweep --summarize runs/sweeps/NAME [--expected [--extend]]

Each combination is one `kit run` (papermill, as everywhere) in `<sweep dir>/<settings>/`, in a
process of its own, so a failure is reported and the others go on. `--threads 1,2` runs every
combination once per thread count (OMP_NUM_THREADS): the tiny models' floats differ between them as
they differ between machines, so the spread over both is the spread a user's machine can land in;
the runs of a thread count go side by side, `cores / threads` at a time, each run's stages one after
another in its one process (`kit run --jobs 1`). Without `--threads`, `--jobs N` runs N combinations
side by side with `cores / N` threads each (one job: `kit run` as a user runs it, its stages side by
side on a CPU, so seed S equals `kit run --set seed=S`; on two cores that is the one-thread run).
Reuse is `kit run`'s: a rerun skips notebooks done with the same parameters, and inside them
every stage reuses only what its key matches. `sweep.json` lists the combinations and how each
went; `summary.json`, `summary.md` and `figures/<metric>.png` hold mean, standard deviation, min,
max and n of every number per grid point (seeds and thread counts pooled) and each comparison of
kit.reference as paired differences with a bootstrap interval, rebuilt by `--summarize` from the run
directories alone. `--expected` (no grid) writes those numbers as the profile's reference bands,
`params/expected/<profile>.json`, and renders the README's results section from them; with
`--extend` it adds the sweep's runs to the bands that file already holds (kit.reference.extend_bands:
the same parameters, package versions and kind of machine, and one of its runs rerun to the digit, or
`--other-machine`), so the seeds of the bands can be run on different days and machines. A call in
a sweep folder of the same profile and settings adds its runs to those the folder holds (`sweep.json`
lists every call).
"""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from kit import reference, runs
from kit.params import load_profile, parse_overrides

SWEEP_FILE = "sweep.json"


def parse_grid(items: Sequence[str]) -> dict[str, list]:
    """`["rloo.beta=0,0.02,0.05"]` -> {"rloo.beta": [0, 0.02, 0.05]} (values read as YAML, like --set)."""
    grid = {}
    for it in items or []:
        if "=" not in it:
            raise SystemExit(f"kit sweep --grid {it!r}: expected KEY=V1,V2,..., e.g. rloo.beta=0,0.02")
        key, values = it.split("=", 1)
        grid[key.strip()] = [parse_overrides([f"x={v}"])["x"] for v in values.split(",") if v.strip()]
    return grid


def combinations(seeds: Sequence[int], grid: Mapping[str, Sequence], threads: Sequence[int] = ()) -> list[dict]:
    """Every grid point crossed with every seed (and thread count), as {dotted key: value} with `seed`
    (then `threads`) last."""
    keys = sorted(grid)
    out = []
    for values in itertools.product(*(grid[k] for k in keys)) if keys else [()]:
        for s in seeds:
            for t in threads or [None]:
                out.append({**dict(zip(keys, values)), "seed": int(s), **({"threads": int(t)} if t else {})})
    return out


def combo_name(settings: Mapping) -> str:
    """A run directory's name from its settings, e.g. `rloo.beta=0.02__seed=1__threads=2`."""
    parts = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in settings.items()]
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", "__".join(parts))


def _group(settings: Mapping) -> str:
    rest = {k: v for k, v in settings.items() if k not in ("seed", "threads")}
    return combo_name(rest) if rest else "all seeds"


def _run_one(profile: str, run_dir: Path, settings: Mapping, base: Sequence[str], only, track,
             threads: int | None) -> dict:
    """One combination as its own `kit run` process; its log in `<run_dir>/sweep.log`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    report = run_dir / "sweep_report.json"
    report.unlink(missing_ok=True)
    sets = {k: v for k, v in settings.items() if k != "threads"}
    cmd = [sys.executable, "-m", "kit.cli", "run", "--profile", profile, "--run-dir", str(run_dir),
           "--report", str(report), *[x for s in base for x in ("--set", s)],
           *[x for k, v in sets.items() for x in ("--set", f"{k}={json.dumps(v)}")]]
    if only:
        cmd += ["--only", ",".join(only)]
    if track:
        cmd += ["--track", track]
    threads = settings.get("threads", threads)
    env = dict(os.environ) if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads),
                                                    "MKL_NUM_THREADS": str(threads)}
    if threads is not None:  # every stage in the run's one process, with these threads (not side by side)
        cmd += ["--jobs", "1"]
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
              jobs: int = 1, base: Sequence[str] = (), threads: Sequence[int] = (), expected: bool = False,
              extend: bool = False, times: bool = True, other_machine: bool = False) -> dict:
    """Run every combination (see the module docstring); returns the sweep record with its summary."""
    grid = dict(grid or {})
    if expected and (grid or base or only or track):
        raise SystemExit("kit sweep --expected: the reference bands are the whole profile as it is; "
                         "expected no --grid, --set, --only or --track")
    combos = combinations(seeds, grid, threads)
    for c in combos:  # every combination resolves before anything runs: a bad key fails here, naming it
        load_profile(profile, [*base, *(f"{k}={json.dumps(v)}" for k, v in c.items() if k != "threads")])
    sd = runs.resolve_run_dir(sweep_dir or f"runs/sweeps/{Path(str(profile)).stem}")
    sd.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = max(1, int(jobs))
    record = {"profile": str(profile), "seeds": [int(s) for s in seeds], "threads": [int(t) for t in threads] or None,
              "grid": grid, "only": list(only or []) or None, "track": track, "base": list(base), "jobs": jobs,
              "runs": []}
    record["calls"] = [_command(record)]
    # the folder's earlier calls with the same profile and settings (other seeds or thread counts) stay in it
    earlier = runs.read_json(sd / SWEEP_FILE) or {}
    same = all(earlier.get(k) == record[k] for k in ("profile", "grid", "only", "track", "base"))
    kept = [r for r in earlier.get("runs") or [] if r.get("name") not in {combo_name(c) for c in combos}] if same else []
    if kept:
        record["calls"] = [*(earlier.get("calls") or [_command(earlier)]), *record["calls"]]
    runs.write_json(sd / SWEEP_FILE, {**record, "runs": kept})

    def one(c, per_job_threads):
        name = combo_name(c)
        print(f"kit sweep: {name} ...", flush=True)
        r = _run_one(str(profile), sd / name, c, base, only, track, per_job_threads)
        r["name"] = name
        print(f"kit sweep: {name} {r['status']} in {r['seconds']:.0f} s"
              + (f"\n  {r['error'].splitlines()[-1]}" if r.get("error") else ""), flush=True)
        return r

    results = {}
    if threads:  # one pool per thread count: as many runs side by side as the cores hold
        for t in sorted({int(x) for x in threads}, reverse=True):  # the most threads first, one run at a time
            todo = [c for c in combos if c["threads"] == t]
            with ThreadPoolExecutor(max_workers=max(1, cores // t)) as pool:
                for c, r in zip(todo, pool.map(lambda c: one(c, t), todo)):
                    results[combo_name(c)] = r
    else:  # one job: the threads `kit run` would use (so seed S here equals `kit run --set seed=S`)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for c, r in zip(combos, pool.map(lambda c: one(c, None if jobs == 1 else max(1, cores // jobs)), combos)):
                results[combo_name(c)] = r
    record["runs"] = kept + [results[combo_name(c)] for c in combos]
    runs.write_json(sd / SWEEP_FILE, record)
    record["summary"] = summarize(sd, expected=expected, extend=extend, times=times, other_machine=other_machine)
    return record


def _command(rec: Mapping) -> str:
    return "kit sweep " + " ".join([f"--profile {rec['profile']}", "--seeds " + ",".join(map(str, rec["seeds"])),
                                    *(["--threads " + ",".join(map(str, rec["threads"]))] if rec.get("threads") else []),
                                    *(f"--grid {k}=" + ",".join(map(str, v)) for k, v in rec["grid"].items()),
                                    *(f"--set {b}" for b in rec.get("base") or []),
                                    *([f"--only {','.join(rec['only'])}"] if rec.get("only") else []),
                                    *([f"--track {rec['track']}"] if rec.get("track") else [])])


def summarize(sweep_dir: str | os.PathLike, *, expected: bool = False, extend: bool = False, times: bool = True,
              other_machine: bool = False) -> dict:
    """summary.json, summary.md and figures/ from the sweep's run directories (files only); with
    `expected`, also the profile's reference bands (kit.reference) and the README's results section;
    with `extend` too, the bands file's runs and these together (kit.reference.extend_bands); without
    `times`, the bands hold no run times (the runs shared the machine with other work)."""
    sd = runs.resolve_run_dir(sweep_dir)
    rec = runs.read_json(sd / SWEEP_FILE)
    if not rec:
        raise FileNotFoundError(f"{sd / SWEEP_FILE}: not found; is {sd} a `kit sweep` directory?")
    per_group: dict[str, dict[str, list]] = {}
    seeds_of: dict[str, dict[str, list]] = {}
    runs_of: dict[str, list[dict]] = {}
    failed = []
    for r in rec["runs"]:
        if r["status"] != "ok":
            failed.append({"name": r["name"], "error": r.get("error")})
            continue
        g = _group(r["settings"])
        values = reference.all_metrics(runs.read_json(Path(r["run_dir"]) / "metrics.json", {}) or {})
        runs_of.setdefault(g, []).append(values)
        label = f"s{r['settings'].get('seed')}" + (f"t{r['settings']['threads']}" if "threads" in r["settings"] else "")
        for k, v in values.items():
            per_group.setdefault(g, {}).setdefault(k, []).append(v)
            seeds_of.setdefault(g, {}).setdefault(k, []).append(label)
    summary = {"sweep_dir": str(sd),
               "groups": {g: {k: {**reference.stats(v), "seeds": seeds_of[g][k]} for k, v in m.items()}
                          for g, m in per_group.items()},
               "comparisons": {g: reference.compare(rs) for g, rs in runs_of.items()},
               "failed": failed,
               "command": " ; ".join(rec.get("calls") or [_command(rec)]) + (" --expected" if expected else "")
               + (" --extend" if extend else "") + (" --other-machine" if other_machine else "")
               + ("" if times else " --no-times")}
    runs.write_json(sd / "summary.json", summary)
    runs.atomic_write_text(sd / "summary.md", summary_markdown(summary))
    plot_summary(summary, sd / "figures")
    if expected:
        if failed or rec["grid"] or len(summary["groups"]) != 1:
            raise SystemExit(f"kit sweep --expected: {len(failed)} run(s) failed or the sweep has a grid; "
                             "the bands need every run of the profile as it is")
        profile = Path(str(rec["profile"])).stem
        bands = reference.bands_from_runs(profile, rec["runs"],
                                          reference.made_by(summary["command"], [r["run_dir"] for r in rec["runs"]]),
                                          times=times)
        if extend:
            old = reference.load_bands(profile)
            if old is None:
                raise SystemExit(f"kit sweep --extend: {reference.expected_path(profile)} does not exist; "
                                 "make the bands first (--expected without --extend)")
            try:
                bands = reference.extend_bands(old, bands, reference.expected_path(profile), other_machine=other_machine)
            except ValueError as e:
                raise SystemExit(f"kit sweep --extend: {e}") from None
        summary["expected"] = str(reference.write_bands(bands))
        summary["readme"] = str(reference.update_readme(bands))
    return summary


def _fmt(x) -> str:
    return "" if x is None else (f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}")


def summary_markdown(summary: Mapping) -> str:
    lines = [f"# `{summary['command']}`", ""]
    for g, m in summary["groups"].items():
        lines += [f"## {g}", "", "| metric | mean | sd | min | max | n |", "|---|---|---|---|---|---|"]
        for k, s in m.items():
            lines.append(f"| {k} | {_fmt(s['mean'])} | {_fmt(s['sd'])} | {_fmt(s['min'])} | {_fmt(s['max'])} | {s['n']} |")
        comps = (summary.get("comparisons") or {}).get(g) or []
        if comps:
            lines += ["", "| comparison (a - b, paired by run) | mean | 95% bootstrap interval | verdict |",
                      "|---|---|---|---|"]
            for c in comps:
                lines.append(f"| {c['name']} | {_fmt(c['mean'])} | [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] | "
                             f"{reference.verdict(c)} |")
        lines.append("")
    if summary["failed"]:
        lines += ["## failed", ""] + [f"- {f['name']}: {(f['error'] or '').splitlines()[-1:] or ''}" for f in summary["failed"]]
    return "\n".join(lines) + "\n"


def plot_summary(summary: Mapping, out_dir: Path) -> list[Path]:
    """One figure per metric: every run as a point (labelled seed and threads), the mean and its +-1 sd
    per grid point."""
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
            for x, y, label in zip([i] * s["n"], s["values"], s["seeds"]):
                ax.annotate(label, (x, y), xytext=(5, 0), textcoords="offset points", fontsize=7)
            ax.errorbar([i - 0.15], [s["mean"]], yerr=[[s["sd"] or 0], [s["sd"] or 0]], fmt="D", color="C3",
                        capsize=4, label="mean +- sd" if i == 0 else None)
        ax.set_xticks(range(len(groups)), groups, rotation=20 if len(groups) > 2 else 0, fontsize=8)
        ax.set_title(k, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(runs.save_figure(fig, out_dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', k).strip('_')}.png"))
    return paths
