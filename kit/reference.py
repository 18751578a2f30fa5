"""Reference bands: the numbers a profile gives, over seeds and thread counts, and a run checked against them.

`kit sweep --profile tiny --seeds 0,1,2,3,4 --threads 1,2 --expected` runs the notebooks once per
(seed, threads) and writes `params/expected/<profile>.json`:

    {"profile", "made_by": {command, commit, dirty, lock (sha256), date, machine},
     "runs": [{"seed", "threads"}...], "params": the resolved profile (seed aside),
     "tolerance": {"sd": 2, "floor": 0.01},
     "metrics": {name: {"path", "mean", "sd", "min", "max", "n", "values"}},
     "comparisons": [{"name", "claim", "a", "b", "diffs", "mean", "ci", "holds", "n", ...}],
     "per_run": [{"seed", "threads", "sweep", "seconds", "metrics": {name: value}}...],
     "extended_by": [made_by of each later `--extend` sweep, with the runs it "added", "reproduced" and
                     "differed" (rerun on "other_machine")]}

`kit verify RUN_DIR` compares a run's headline numbers with its profile's bands: a number is inside
when it lies within [min - t, max + t], t = max(2 sd, 0.01 x max(1, |mean|)) (sd over the sweep's
runs; the floor keeps a number that never moved in the sweep from failing on a last-digit change).
Another machine, thread count or BLAS moves the tiny models' floats; the bands hold what those moves
did in the sweep, so a number outside is one the sweep never came near.

Every comparison the README states is a paired difference across the sweep's runs (same seed and
threads), with a percentile bootstrap interval of its mean (scipy) and how many runs it holds in.
The README's results section is rendered from the bands file (`readme_section`), never typed.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from kit import pipeline, runs
from kit.params import PARAMS_DIR, PROJECT_ROOT

EXPECTED_DIR = PARAMS_DIR / "expected"
README = PROJECT_ROOT / "README.md"
TOLERANCE = {"sd": 2.0, "floor": 0.01}
BOOTSTRAP = {"n_resamples": 9999, "confidence": 0.95, "seed": 0}

# Headline numbers at fixed metrics.json paths, in the README's order: notebook 00's pretrained tiny
# models, Track B, then Track A's dataset-level numbers; Track A's per-model scores are found per model
# (headline_metrics). name -> (path, README label)
FIXED: dict[str, tuple[str, str]] = {
    "pretrained CLIP retrieval top-1": ("prepare.models.clip.retrieval_after.i2t_top1",
                                        "tiny CLIP: held-out caption retrieval after pretraining (val, chance 1%)"),
    "pretrained VLM caption loss": ("prepare.models.vlm.caption_loss_after", "tiny VLM: held-out caption loss after pretraining"),
    "CLIP val AUROC": ("clip_finetune.val_auroc", "reason-CLIP AUROC, val"),
    "CLIP test AUROC": ("clip_finetune.test_auroc", "reason-CLIP AUROC, test"),
    "pretrained CLIP test AUROC": ("clip_finetune.pretrained_test_auroc", "pretrained CLIP on the same test pairs"),
    "CLIP test F1": ("clip_finetune.test.f1", "reason-CLIP F1, test (paper B's ViT-B/32: AUROC 0.958, F1 0.868)"),
    "Direct action mF1": ("direct.eval.action.macro_f1", "Direct (untrained VLM) action mF1"),
    "Direct reason mF1": ("direct.eval.reason.macro_f1", "Direct reason mF1"),
    "majority action mF1": ("sft_baseline.majority.action.macro_f1", "majority-class predictor action mF1"),
    "majority reason mF1": ("sft_baseline.majority.reason.macro_f1", "majority-class predictor reason mF1"),
    "SFT action mF1": ("sft_baseline.eval.action.macro_f1", "SFT baseline action mF1"),
    "SFT reason mF1": ("sft_baseline.eval.reason.macro_f1", "SFT baseline reason mF1"),
    "RLOO reward, first epoch": ("rloo.reward_first_epoch", "RLOO mean reward, first epoch"),
    "RLOO reward, last epoch": ("rloo.reward_last_epoch", "RLOO mean reward, last epoch"),
    "held-out CLIP score, base model": ("rloo.eval.base_model.clip_score",
                                       "held-out (test) CLIP score of greedy descriptions, base model"),
    "held-out CLIP score, after RLOO": ("rloo.eval.clip_score", "the same after RLOO"),
    "specificity, base model": ("rloo.eval.base_model.specificity", "specificity (own image minus another's), base model"),
    "specificity, after RLOO": ("rloo.eval.specificity", "specificity after RLOO"),
    "stage-2 action mF1": ("action_sft.eval.action.macro_f1", "stage 2 (RLOO + action SFT) action mF1"),
    "A judge validity (Spearman)": ("evaluate.coda_lm.judge_validity.spearman",
                                    "Track A: the rubric judge's rank correlation with correctness"),
    "A synthetic / Train QA pairs": ("synthesis.card.ratio_to_train", "Track A: synthetic QA pairs per Train QA pair"),
    "A named-object precision": ("synthesis.quality.named_objects.overall.precision",
                                 "Track A: named-object precision against the hidden scene graphs"),
    "A named-object recall": ("synthesis.quality.named_objects.overall.recall",
                              "Track A: named-object recall against the hidden scene graphs"),
}
# Numbers derived from two headline numbers of the same run: name -> (a, b, label); value a - b
DERIVED: dict[str, tuple[str, str, str]] = {
    "RLOO held-out CLIP-score gain": ("held-out CLIP score, after RLOO", "held-out CLIP score, base model",
                                      "RLOO's gain in held-out CLIP score (after minus base)"),
}
TASK_SHORT = {"general_perception": "general", "region_perception": "region", "driving_suggestion": "driving"}
# Track A's models in the README's order (the rest follow as found)
A_ORDER = ["direct", "sft", "sft+synth"]


def _get(d: Any, path: str):
    for part in path.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return None
        d = d[part]
    return d if isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d) else None


def all_metrics(metrics: Mapping) -> dict[str, float]:
    """Every number the sweep summarises: the headline numbers, plus Track A's per-task scores and the
    Elo bootstrap intervals. A stage the run did not include is simply absent."""
    out = {name: v for name, (path, _) in FIXED.items() if (v := _get(metrics, path)) is not None}
    for name, (a, b, _) in DERIVED.items():
        if a in out and b in out:
            out[name] = out[a] - out[b]
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


def is_headline(name: str) -> bool:
    """The numbers the bands hold and `kit verify` checks: FIXED, DERIVED, and each Track A model's
    overall score and Elo (per-task scores and Elo intervals stay in the sweep's summary)."""
    return name in FIXED or name in DERIVED or bool(re.fullmatch(r"A .+: (overall|Elo)", name))


def headline_metrics(metrics: Mapping) -> dict[str, float]:
    return {k: v for k, v in all_metrics(metrics).items() if is_headline(k)}


def stats(xs: Sequence[float]) -> dict:
    """mean, sample sd (None for one value), min, max, n, values."""
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "min": min(xs), "max": max(xs), "n": n, "values": list(xs)}


# ---- comparisons ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A claim `a > b` (or `a ~ b`, "about as well") about two headline numbers of the same run."""
    name: str
    a: str
    b: str
    claim: str = ">"      # ">": a above b | "~": about equal (stated with the interval of a - b)


def comparisons(names: Iterable[str]) -> list[Comparison]:
    """Every comparison the README states, for the headline numbers a sweep has."""
    have = set(names)
    out = [
        Comparison("SFT beats Direct, action mF1", "SFT action mF1", "Direct action mF1"),
        Comparison("SFT beats Direct, reason mF1", "SFT reason mF1", "Direct reason mF1"),
        Comparison("SFT beats the majority class, action mF1", "SFT action mF1", "majority action mF1"),
        Comparison("SFT beats the majority class, reason mF1", "SFT reason mF1", "majority reason mF1"),
        Comparison("fine-tuned reason-CLIP beats the pretrained CLIP, test AUROC", "CLIP test AUROC",
                   "pretrained CLIP test AUROC"),
        Comparison("RLOO's reward rises from its first epoch to its last", "RLOO reward, last epoch",
                   "RLOO reward, first epoch"),
        Comparison("RLOO raises the held-out CLIP score", "held-out CLIP score, after RLOO", "held-out CLIP score, base model"),
        Comparison("RLOO raises specificity", "specificity, after RLOO", "specificity, base model"),
        Comparison("stage 2 answers actions about as well as SFT (action mF1)", "stage-2 action mF1", "SFT action mF1", "~"),
        Comparison("stage 2 beats the majority class, action mF1", "stage-2 action mF1", "majority action mF1"),
    ]
    models = sorted({m.group(1) for n in have if (m := re.fullmatch(r"A (.+): overall", n))}, key=_model_order)
    if {"sft", "direct"} <= set(models):
        out += [Comparison("A: SFT beats Direct, overall", "A sft: overall", "A direct: overall"),
                Comparison("A: SFT beats Direct, Elo", "A sft: Elo", "A direct: Elo")]
    if {"sft", "sft+synth"} <= set(models):
        out.append(Comparison("A: SFT + synthetic beats SFT, overall", "A sft+synth: overall", "A sft: overall"))
    for m in models:  # each SPIN round against the model its variant started from, and against SFT
        r = re.fullmatch(r"spin-(orig|synth) r(\d+)", m)
        if not r:
            continue
        start = "sft" if r.group(1) == "orig" else "sft+synth"
        out.append(Comparison(f"A: {m} beats {start}, overall", f"A {m}: overall", f"A {start}: overall"))
        out.append(Comparison(f"A: {m} beats {start}, Elo", f"A {m}: Elo", f"A {start}: Elo"))
        if start != "sft":
            out.append(Comparison(f"A: {m} beats sft, overall", f"A {m}: overall", "A sft: overall"))
    return [c for c in out if c.a in have and c.b in have]


def _model_order(m: str):
    r = re.fullmatch(r"spin-(orig|synth) r(\d+)", m)
    return (A_ORDER.index(m), 0, 0) if m in A_ORDER else ((len(A_ORDER), r.group(1), int(r.group(2))) if r
                                                          else (len(A_ORDER) + 1, m, 0))


def bootstrap_ci(xs: Sequence[float]) -> list[float]:
    """The percentile bootstrap 95% interval of the mean of `xs` (scipy.stats.bootstrap, fixed seed)."""
    import numpy as np
    from scipy import stats as st

    x = np.asarray(xs, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0:
        return [float(x.mean()), float(x.mean())]
    r = st.bootstrap((x,), np.mean, n_resamples=BOOTSTRAP["n_resamples"], confidence_level=BOOTSTRAP["confidence"],
                     method="percentile", rng=np.random.default_rng(BOOTSTRAP["seed"]))
    return [float(r.confidence_interval.low), float(r.confidence_interval.high)]


def compare(per_run: Sequence[Mapping[str, float]], comps: Sequence[Comparison] | None = None) -> list[dict]:
    """Each comparison over the runs that hold both of its numbers: the paired differences a - b, their
    mean and bootstrap interval, and in how many runs the claim holds (">": a > b; "~": |a - b| no larger
    than the spread of b across runs, 2 sd)."""
    comps = comps if comps is not None else comparisons({k for r in per_run for k in r})
    out = []
    for c in comps:
        pairs = [(r[c.a], r[c.b]) for r in per_run if c.a in r and c.b in r]
        if not pairs:
            continue
        diffs = [a - b for a, b in pairs]
        if c.claim == ">":
            holds = sum(d > 0 for d in diffs)
            within = None
        else:
            bs = [b for _, b in pairs]
            within = 2 * (stats(bs)["sd"] or 0.0)
            holds = sum(abs(d) <= within for d in diffs)
        lo, hi = bootstrap_ci(diffs)
        out.append({"name": c.name, "claim": c.claim, "a": c.a, "b": c.b, "diffs": diffs, "mean": sum(diffs) / len(diffs),
                    "ci": [lo, hi], "holds": holds, "n": len(diffs), **({"within": within} if within is not None else {})})
    return out


def verdict(c: Mapping) -> str:
    """`holds in 10 of 10` / `holds in 6 of 10: not a finding` / `the opposite holds in 10 of 10`."""
    if c["holds"] == c["n"]:
        return f"holds in {c['n']} of {c['n']} runs"
    if c["claim"] == ">" and c["holds"] == 0:
        return f"the opposite holds in {c['n']} of {c['n']} runs"
    return f"holds in {c['holds']} of {c['n']} runs: not a finding"


# ---- the bands file ------------------------------------------------------------------------------------
def expected_path(profile: str) -> Path:
    return EXPECTED_DIR / f"{Path(str(profile)).stem}.json"


def _comparable(P: Mapping) -> dict:
    """The parameters a run's numbers depend on, beyond the seed, the tracks it ran (`kit run --track B`
    gives Track B's numbers of the same profile) and the runner's own settings."""
    return {k: v for k, v in P.items() if k not in ("seed", "tracks", "runner", "profile")}


def _reused(obj) -> bool:
    """Whether any stage's metrics say it reused or resumed a training made by an earlier invocation."""
    if isinstance(obj, Mapping):
        return (obj.get("reused") is True or obj.get("resumed") is True or bool(obj.get("resumed_from"))
                or any(_reused(v) for v in obj.values()))
    return isinstance(obj, list) and any(_reused(v) for v in obj)


def run_seconds(manifest: Mapping, metrics: Mapping) -> float | None:
    """A whole run's time: its notebooks' seconds from its manifest (so a sweep that resumed a run, or
    reran it and skipped every notebook, still counts the time the work took), or None where a stage
    reused a training made by an earlier, interrupted invocation (its time would not be the work's)."""
    stages = (manifest or {}).get("stages") or {}
    if not stages or _reused(metrics) or any(v.get("seconds") is None for v in stages.values()):
        return None
    return round(sum(v["seconds"] for v in stages.values()), 1)


def bands_from_runs(profile: str, run_records: Sequence[Mapping], made_by: Mapping, *, times: bool = True) -> dict:
    """The bands file's content from the sweep's finished runs: [{"settings": {seed, threads}, "run_dir"}];
    without `times`, the runs' times are left out (they shared the machine with other work)."""
    per_run, params = [], None
    for r in run_records:
        rd = Path(r["run_dir"])
        man = runs.read_json(rd / "manifest.json", {}) or {}
        metrics = runs.read_metrics(rd)
        per_run.append({**_settings(r["settings"]),
                        "seconds": run_seconds(man, metrics) if times else None, "metrics": headline_metrics(metrics)})
        p = _comparable(man.get("params") or {})
        if params is None:
            params = p
        elif p != params:
            raise ValueError(f"{rd}: its parameters differ from the sweep's other runs beyond the seed; "
                             "bands pool runs of one profile only (no --grid, no per-run --set)")
    return _assemble(profile, per_run, params, dict(made_by))


def _assemble(profile: str, per_run: Sequence[Mapping], params: Mapping, made_by: Mapping, **extra) -> dict:
    """Every band and comparison from the runs' headline numbers (`per_run`, kept in the file so that
    a later sweep can add runs to it: extend_bands)."""
    metrics = {}
    for n in _ordered({k for r in per_run for k in r["metrics"]}):
        vals = [r["metrics"][n] for r in per_run if n in r["metrics"]]
        path = FIXED[n][0] if n in FIXED else None
        metrics[n] = {**({"path": path} if path else {}), **stats(vals)}
    seconds: dict[str, list] = {}
    for r in per_run:
        if r.get("seconds") is not None:
            seconds.setdefault(str(r.get("threads", "default")), []).append(r["seconds"])
    return {"profile": profile, "made_by": dict(made_by), **extra,
            "runs": [_settings(r) for r in per_run], "params": params,
            "tolerance": dict(TOLERANCE), "metrics": metrics, "comparisons": compare([r["metrics"] for r in per_run]),
            # seconds of each whole `kit run` (its notebooks, run_seconds), by thread count (the 1-thread
            # runs went two side by side)
            "seconds": {t: stats(v) for t, v in seconds.items()},
            "per_run": [dict(r) for r in per_run]}


def _per_run(bands: Mapping) -> list[dict]:
    """The bands' runs with their headline numbers; a file written before `per_run` was kept gives them
    back from each metric's values (in the order of `runs`, when every metric has one per run)."""
    if "per_run" in bands:
        return [dict(r) for r in bands["per_run"]]
    n = len(bands["runs"])
    if any(m["n"] != n or len(m.get("values") or []) != n for m in bands["metrics"].values()):
        raise ValueError("the bands file has metrics that not every run gave, and no per_run: their runs cannot be "
                         "told apart; make the bands anew (kit sweep --expected without --extend)")
    return [{**r, "seconds": None, "metrics": {k: m["values"][i] for k, m in bands["metrics"].items()}}
            for i, r in enumerate(bands["runs"])]


def _label(r: Mapping) -> str:
    threads = f" with {r['threads']} thread{'s' if r['threads'] != 1 else ''}" if "threads" in r else ""
    return f"seed {r['seed']}{threads}"


def _kind(machine: Mapping | None) -> dict:
    """The kind of machine, as bands compare it: the CPU's name and cores (not its kernel's version)."""
    return {k: (machine or {}).get(k) for k in ("cpu", "cores")}


def extend_bands(old: Mapping, new: Mapping, where: str | os.PathLike = "the bands file", *,
                 other_machine: bool = False) -> dict:
    """`old` (the profile's bands) with the runs of `new` (a later sweep's bands) added: `kit sweep
    --expected --extend`, so that seeds can be added on another day, in another session, at another
    commit, or on another machine. Allowed only where the numbers are the same experiment: the same
    resolved parameters, package versions and kind of machine (CPU name and cores), and either

    - on the same machine: at least one run of `new` that `old` already holds (same seed and threads)
      giving every headline number to the digit, which shows that this commit and machine reproduce
      the bands; that run is kept once; or
    - with `other_machine`, runs made on another machine of the same kind, which the same commit need
      not reproduce to the digit (another CPU's kernels round differently; that spread is what bands
      are for): every run of `new` is added, a rerun seed included, and the bands say so.

    Each run in the result carries `sweep` (0: the first sweep; n: the n-th extension). Raises
    ValueError naming what differs."""
    differs = _diff_keys(new["params"] or {}, old.get("params") or {})
    if differs:
        raise ValueError(f"{where}: the new runs' parameters differ from the bands' in {', '.join(differs[:5])}; "
                         "make the bands anew (kit sweep --expected without --extend)")
    mo, mn = old.get("made_by") or {}, new.get("made_by") or {}
    # the packages the numbers depend on (the manifests' tracked ones, as kit verify compares), not the
    # lock file's bytes: a development tool added to the lock changes no number
    for what, said, get in (("packages", "set of package versions", lambda m: m.get("packages")),
                            ("machine", "kind of machine", lambda m: _kind(m.get("machine")))):
        if get(mo) != get(mn):
            raise ValueError(f"{where}: the new runs were made with another {said} ({get(mn)}) than the bands "
                             f"({get(mo)}); make the bands anew (kit sweep --expected without --extend)")
    old_runs = [{"sweep": 0, **r} for r in _per_run(old)]
    n = len(old.get("extended_by") or []) + 1
    new_runs = [{**r, "sweep": n} for r in _per_run(new)]
    key = lambda r: (r["seed"], r.get("threads"))  # noqa: E731
    held = {key(r): r for r in old_runs}
    again = [r for r in new_runs if key(r) in held]

    def differing(r: Mapping) -> str | None:
        a, b = held[key(r)]["metrics"], r["metrics"]
        for name in sorted(set(a) | set(b)):
            x, y = a.get(name), b.get(name)
            if x is None or y is None or not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12):
                return f"{_label(r)} gives {name} = {y} here and {x} in the bands"
        return None

    verdicts = [(r, differing(r)) for r in again]
    diffs = [d for _, d in verdicts if d]
    if not other_machine:
        if not again:
            raise ValueError(f"{where}: --extend needs at least one run the bands already hold (e.g. "
                             f"{_label(old_runs[0])}) among the new ones, to show that this commit and machine "
                             "reproduce them (or --other-machine, for runs made on another machine of the same kind)")
        if diffs:
            raise ValueError(f"{where}: {diffs[0]}: this commit or machine does not reproduce them. If the runs were "
                             "made on another machine and nothing since the bands' commit changes a number, add them "
                             "with --other-machine; else make the bands anew (kit sweep --expected without --extend)")
    added = new_runs if other_machine else [r for r in new_runs if key(r) not in held]
    step = {**mn, "added": [_settings(r) for r in added], "other_machine": other_machine,
            "reproduced": [_settings(r) for r, d in verdicts if not d],
            "differed": [_settings(r) for r, d in verdicts if d]}
    return _assemble(old["profile"], old_runs + added, old["params"], mo,
                     extended_by=[*(old.get("extended_by") or []), step])


def _settings(r: Mapping) -> dict:
    return {k: r[k] for k in ("seed", "threads") if k in r}


def _ordered(names: Iterable[str]) -> list[str]:
    names = set(names)
    fixed = [n for n in [*FIXED, *DERIVED] if n in names]
    a = sorted(names - set(fixed), key=lambda n: (_model_order(n[2:].rsplit(":", 1)[0]), n.rsplit(":", 1)[-1] != " overall"))
    return fixed + a


def write_bands(bands: Mapping, path: Path | None = None) -> Path:
    return runs.write_json(path or expected_path(bands["profile"]), bands)


def load_bands(profile: str, path: str | os.PathLike | None = None) -> dict | None:
    """The profile's bands file, or None when it has none."""
    p = Path(path) if path else expected_path(profile)
    data = runs.read_json(p)
    if data is None:
        return None
    for key in ("metrics", "tolerance", "runs"):
        if key not in data:
            raise ValueError(f"{p}: no '{key}' field; expected a bands file written by `kit sweep --expected`")
    return data


def _commits(manifest: Mapping) -> list[str]:
    """The commits a run's notebooks ran at (per stage; a run resumed after a new commit has several)."""
    per_stage = {v.get("commit") for v in ((manifest.get("stages") or {}).values()) if v.get("commit")}
    return sorted(per_stage) if per_stage else [c for c in [(manifest.get("git") or {}).get("commit")] if c]


def made_by(command: str, run_dirs: Sequence[str | os.PathLike]) -> dict:
    """What made the runs, from their manifests (not from the process that summarizes them): the commit
    (and whether it had uncommitted changes; `commits` when the notebooks ran at several), the lock,
    the machine and the day the first run started."""
    mans = [runs.read_json(Path(d) / "manifest.json", {}) or {} for d in run_dirs]

    def one(values: list, what: str):
        vals = sorted({json.dumps(v, sort_keys=True) for v in values})
        if len(vals) > 1:
            raise ValueError(f"the sweep's runs were made with different {what}s ({len(vals)}); bands pool one only")
        return json.loads(vals[0]) if vals else None

    git = [m.get("git") or {} for m in mans]
    commits = sorted({c for m in mans for c in _commits(m)})
    return {"command": command, "commit": commits[0] if len(commits) == 1 else None,
            **({"commits": commits} if len(commits) > 1 else {}),
            "dirty": any(g.get("dirty") for g in git), "lock": one([(m.get("lock") or {}).get("sha256") for m in mans], "lock"),
            "date": min((m.get("started") or "?")[:10] for m in mans) if mans else None,
            # the machine, not its kernel's version or the thread count (a setting of the sweep)
            "machine": one([{k: v for k, v in (m.get("machine") or {}).items() if k not in ("threads", "platform")}
                            for m in mans], "machine"),
            "packages": one([{k: v for k, v in (m.get("packages") or {}).items() if k != "kit"} for m in mans], "package set")}


# ---- kit verify ----------------------------------------------------------------------------------------
def band(m: Mapping, tol: Mapping = TOLERANCE) -> tuple[float, float]:
    t = max(tol["sd"] * (m.get("sd") or 0.0), tol["floor"] * max(1.0, abs(m["mean"])))
    return m["min"] - t, m["max"] + t


def verify(run_dir: str | os.PathLike, bands: Mapping | None = None) -> dict:
    """A run's headline numbers against its profile's bands.

    Returns {"ok", "profile", "rows": [{"metric", "lo", "hi", "value", "status"}], "notes": [...]}; a row's
    status is `inside`, `OUTSIDE`, `missing` (its stage ran and left no such number) or `not run`
    (the run did not include its stage or track). `ok` is False when a row is OUTSIDE or missing, or
    when the run's parameters differ from the sweep's (then no band applies)."""
    rd = runs.resolve_run_dir(run_dir)
    man = runs.read_json(rd / "manifest.json")
    if man is None:
        raise FileNotFoundError(f"{rd / 'manifest.json'}: not found; expected a run directory written by `kit run`")
    profile = man.get("profile") or "?"
    bands = bands if bands is not None else load_bands(profile)
    if bands is None:
        raise FileNotFoundError(f"{expected_path(profile)}: no reference bands for profile '{profile}'; "
                                f"make them with `kit sweep --profile {profile} --seeds 0,1,2,3,4 --threads 1,2 --expected`")
    notes = []
    P = man.get("params") or {}
    differs = sorted(_diff_keys(_comparable(P), bands.get("params") or {}))
    if differs:
        notes.append(f"this run's parameters differ from the reference sweep's in {', '.join(differs)}: "
                     "the bands do not apply to it")
    # the packages the numbers depend on (the manifest's tracked ones), not the lock file's bytes: a
    # development tool added to the lock changes no number
    ref_pk, pk = (bands.get("made_by") or {}).get("packages") or {}, man.get("packages") or {}
    other = [f"{k} {pk.get(k)} (bands: {v})" for k, v in sorted(ref_pk.items()) if pk and pk.get(k) != v]
    if other:
        notes.append(f"made with other packages than the bands were: {', '.join(other)}")
    if (man.get("lock") or {}).get("differs"):
        notes.append(f"installed packages differ from requirements.lock: {'; '.join(man['lock']['differs'][:5])}")
    have = headline_metrics(runs.read_metrics(rd))
    tracks = set(P.get("tracks") or ["A", "B"])
    finished = {nb for nb, folder in pipeline.NOTEBOOKS.items()
                if ((man.get("stages") or {}).get(folder) or {}).get("status") == "ok"}
    rows = []
    for name, m in bands["metrics"].items():
        lo, hi = band(m, bands.get("tolerance") or TOLERANCE)
        v = have.get(name)
        track, nb = _origin(name)
        if v is not None:
            status = "inside" if lo <= v <= hi else "OUTSIDE"
        else:
            status = "missing" if (track is None or track in tracks) and nb in finished else "not run"
        rows.append({"metric": name, "lo": lo, "hi": hi, "mean": m["mean"], "sd": m.get("sd"), "value": v, "status": status})
    bad = [r for r in rows if r["status"] in ("OUTSIDE", "missing")]
    return {"ok": not bad and not differs, "applies": not differs, "profile": profile, "rows": rows, "notes": notes,
            "checked": sum(r["status"] != "not run" for r in rows), "outside": len(bad)}


def _diff_keys(a: Mapping, b: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            out += _diff_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def _origin(name: str) -> tuple[str | None, str]:
    """(track or None for both, notebook number) of a headline number."""
    if name in DERIVED:
        return _origin(DERIVED[name][0])
    if name in FIXED:
        path = FIXED[name][0]
        folder = path.split(".")[0]  # metrics.json's keys are the stages' folders
        track = "A" if path.startswith("evaluate.coda_lm") else pipeline.track_of_folder(folder)
        return track, pipeline.notebook_of_folder(folder)
    if name.endswith(": Elo"):
        return "A", "07"
    return "A", "04" if name.startswith("A spin-") else "03"


def _fmt(x: float | None, ref: float | None = None) -> str:
    if x is None:
        return "-"
    r = abs(ref if ref is not None else x)
    return f"{x:.1f}" if r >= 10 else f"{x:.3f}"


def verify_table(res: Mapping) -> str:
    """The result of `verify` as a plain-text table, one line a metric, then the verdict."""
    w = max(len(r["metric"]) for r in res["rows"]) if res["rows"] else 10
    lines = [f"{'metric':<{w}}  {'band':>19}  {'yours':>8}  inside?", "-" * (w + 41)]
    for r in res["rows"]:
        lines.append(f"{r['metric']:<{w}}  {_fmt(r['lo'], r['mean']):>8} .. {_fmt(r['hi'], r['mean']):<8}  "
                     f"{_fmt(r['value'], r['mean']):>8}  {r['status']}")
    lines += [f"note: {n}" for n in res["notes"]]
    verdict_line = (f"kit verify: {res['checked']} numbers checked against the {res['profile']} bands: "
                    + ("all inside." if res["ok"] else "the bands do not apply (see the notes)." if not res["applies"]
                       else f"{res['outside']} outside or missing."))
    return "\n".join(lines + [verdict_line])


# ---- the README's results section ----------------------------------------------------------------------
BEGIN = "<!-- begin reference bands: {profile} (rendered from params/expected/{profile}.json by `kit sweep --expected`; do not edit) -->"
END = "<!-- end reference bands: {profile} -->"
MODEL_LABELS = {"direct": "Direct", "sft": "SFT on Train", "sft+synth": "SFT on Train + synthetic"}


def model_label(m: str) -> str:
    r = re.fullmatch(r"spin-(orig|synth) r(\d+)", m)
    if r:
        return f"SPIN from {'SFT' if r.group(1) == 'orig' else 'SFT + synthetic'}, round {r.group(2)}"
    return MODEL_LABELS.get(m, m)


def metric_label(name: str) -> str:
    if name in FIXED:
        return FIXED[name][1]
    if name in DERIVED:
        return DERIVED[name][2]
    r = re.fullmatch(r"A (.+): (overall|Elo)", name)
    if r:
        return (f"Track A overall score (0-100), {model_label(r.group(1))}" if r.group(2) == "overall"
                else f"Track A Elo (bootstrap median), {model_label(r.group(1))}")
    return name


def _signed(x: float, ref: float) -> str:
    return ("+" if x >= 0 else "") + _fmt(x, ref)


def _made_text(mb: Mapping) -> str:
    commits = mb.get("commits") or [mb.get("commit") or "?"]
    return (f"`{mb['command']}` on {mb.get('date', '?')}, commit{'s' if len(commits) > 1 else ''} "
            + ", ".join(f"`{c[:10]}`" for c in commits) + (" (with uncommitted changes)" if mb.get("dirty") else ""))


def _step_text(x: Mapping) -> str:
    """One `--extend` sweep, as the README's first line of the bands tells it."""
    where = " on another machine of the same kind" if x.get("other_machine") else ""
    out = f"{_made_text(x)}{where}, adding {_runs_text(x['added'])}"
    if x.get("reproduced"):
        out += f"; its {_labels(x['reproduced'])}, which an earlier sweep ran too, gave every headline number to the digit"
    if x.get("differed"):
        out += (f"; its {_labels(x['differed'])}, which an earlier sweep ran too, gave other numbers there (another "
                "CPU's floats): both runs are in the bands")
    return out


def _labels(rs: Sequence[Mapping], sep: str = ", ") -> str:
    return sep.join(_label(r) for r in rs)


def _runs_text(rs: Sequence[Mapping]) -> str:
    return f"{len(rs)} run{'s' if len(rs) != 1 else ''} ({_labels(rs, '; ')})"


def readme_section(bands: Mapping) -> str:
    """The README's results: one row per headline number (mean ± sd, min .. max, n), then every comparison
    with its paired mean difference, bootstrap interval and in how many runs it holds."""
    mb, prof = bands["made_by"], bands["profile"]
    n_runs = len(bands["runs"])
    seeds = sorted({r["seed"] for r in bands["runs"]})
    threads = sorted({r["threads"] for r in bands["runs"] if "threads" in r})
    made = [_made_text(mb)] + [_step_text(x) for x in bands.get("extended_by") or []]
    tail = (f"requirements.lock `{(mb.get('lock') or '?')[:12]}`, {(mb.get('machine') or {}).get('cpu', '?')} with "
            f"{(mb.get('machine') or {}).get('cores', '?')} cores: {n_runs} runs (seeds {', '.join(map(str, seeds))}"
            + (f" x {' and '.join(map(str, threads))} threads" if threads else "") + ").")
    # one sweep: "`cmd` on D, commit C, requirements.lock ..."; extended: "...; then `cmd2` .... Requirements.lock ..."
    first = "; then ".join(made) + (f". {tail[0].upper()}{tail[1:]}" if len(made) > 1 else f", {tail}")
    lines = [BEGIN.format(profile=prof), "", first]
    secs = {t: v for t, v in (bands.get("seconds") or {}).items() if t.isdigit()}
    t = str(max(threads)) if threads else None
    if t in secs:  # the runs with the most threads ran one at a time, as `make run` does (the others side by side)
        s = secs[t]
        took = (f"{s['mean'] / 60:.1f} min (1 run; the others reused a training, so their time says nothing)"
                if s["n"] == 1 else
                f"{s['mean'] / 60:.1f} min on average ({s['min'] / 60:.1f} to {s['max'] / 60:.1f}, {s['n']} runs)")
        lines += ["", f"A whole `kit run` of the sweep with {t} threads, one run at a time, took {took}, "
                      "set-up not included."]
    lines += ["", f"| {prof} profile | mean ± sd | min .. max | n |", "|---|---|---|---|"]
    for name, m in bands["metrics"].items():
        sd = "" if m.get("sd") is None else f" ± {_fmt(m['sd'], m['mean'])}"
        lines.append(f"| {metric_label(name)} | {_fmt(m['mean'])}{sd} | {_fmt(m['min'], m['mean'])} .. "
                     f"{_fmt(m['max'], m['mean'])} | {m['n']} |")
    comps = bands.get("comparisons") or []
    if comps:
        lines += ["", f"What holds, as paired differences across the {n_runs} runs (a run against itself: same seed, "
                      "same threads), with the 95% bootstrap interval of their mean:", ""]
        for c in comps:
            ref = (bands["metrics"].get(c["a"]) or {}).get("mean", c["mean"])
            what = (f"{_signed(c['mean'], ref)} [{_signed(c['ci'][0], ref)}, {_signed(c['ci'][1], ref)}]")
            if c["claim"] == "~":
                what += f", within ±{_fmt(c['within'], ref)} (2 sd of the second) in {c['holds']} of {c['n']} runs"
                lines.append(f"- {c['name']}: {what}" + (": not a finding" if c["holds"] < c["n"] else "") + ".")
            else:
                lines.append(f"- {c['name']}: {what}, {verdict(c)}.")
    lines += ["", END.format(profile=prof)]
    return "\n".join(lines)


def _markers(text: str, profile: str, path: Path) -> tuple[int, int]:
    b, e = BEGIN.format(profile=profile), END.format(profile=profile)
    i, j = text.find(b), text.find(e)
    if i < 0 or j < i:
        raise ValueError(f"{path}: no '{b}' ... '{e}' section to render the {profile} bands into")
    return i, j + len(e)


def update_readme(bands: Mapping, path: Path = README) -> Path:
    """Render the bands into the README between their markers."""
    text = path.read_text()
    i, j = _markers(text, bands["profile"], path)
    runs.atomic_write_text(path, text[:i] + readme_section(bands) + text[j:])
    return path


def readme_matches(profile: str, path: Path = README) -> bool:
    """Whether the README's section for `profile` is exactly what its bands file renders."""
    text = path.read_text()
    i, j = _markers(text, profile, path)
    return text[i:j] == readme_section(load_bands(profile))


def conclusions_table(profile: str, *contains: str):
    """The reference sweep's comparisons whose name contains any of `contains` (all when none), as a
    table: the claim, the mean paired difference, its 95% bootstrap interval and in how many runs it
    holds. Notebooks show it beside their own run's numbers; empty when the profile has no bands."""
    import pandas as pd

    bands = load_bands(profile)
    comps = [c for c in (bands or {}).get("comparisons", [])
             if not contains or any(s.lower() in c["name"].lower() for s in contains)]
    return pd.DataFrame([{"comparison (a - b)": c["name"], "mean difference": c["mean"],
                          "95% interval": f"[{_signed(c['ci'][0], c['mean'])}, {_signed(c['ci'][1], c['mean'])}]",
                          "holds in": f"{c['holds']} of {c['n']} runs"} for c in comps])
