"""Track A figures, redrawn from the run directory alone (metrics.json, the submission files,
the judgments and battles.jsonl): no model is loaded.

    scores.png            per-task and overall CODA-LM scores (headline_models: SPIN's last rounds only), beside paper A
    region_per_class.png  region perception per class (the official evaluator's 7 classes), same models
    win_rates.png         adjusted win rate of each model (row) against each other (column)
    elo.png               online Elo, Bradley-Terry, and the bootstrap median with its 95% interval
    examples.png          one item per task: the image (region boxed in red), reference, each answer, its rating
    judge_validity.png    the judge's rating against the object-F1 of perturbed references
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kit import runs  # noqa: E402
from kit.coda.paper import PAPER_A_FINAL_TASKS, PAPER_A_TABLE1  # noqa: E402
from kit.coda.results import evaluated_models  # noqa: E402
from kit.coda.rounds import rounds_of  # noqa: E402
from kit.data import coda_lm_root  # noqa: E402
from kit.data.coda_lm import CLASSES  # noqa: E402
from kit.data.coda_vqa import TASKS  # noqa: E402
from kit.judge.elo import win_rate_matrix  # noqa: E402

SUB = "coda_figures"
TASK_LABEL = {"general_perception": "general\nperception", "region_perception": "region\nperception",
              "driving_suggestion": "driving\nsuggestion", "overall": "overall"}


def plot_scores(models: dict, path: Path) -> Path:
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [1.3, 1]})
    cols = [*TASKS, "overall"]
    w = 0.8 / max(len(models), 1)
    for i, (name, e) in enumerate(models.items()):
        s = e["scores"]
        vals = [s[t]["score_100"] for t in TASKS] + [s["overall_100"]]
        xs = np.arange(len(cols)) + (i - (len(models) - 1) / 2) * w
        bars = ax.bar(xs, [v or 0 for v in vals], w, label=f"{name} (coverage {s['coverage']:.0%})")
        for b, v in zip(bars, vals):
            ax.annotate("n/a" if v is None else f"{v:.1f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.scatter(np.arange(3), [PAPER_A_FINAL_TASKS[t] for t in TASKS], marker="_", s=400, color="k", zorder=3,
               label="paper A, final MiniCPM (real data)")
    ax.set_xticks(range(len(cols)), [TASK_LABEL[c] for c in cols])
    ax.set_ylim(0, 105)
    ax.set_ylabel("score (mean rating x 10)")
    ax.set_title("this run: CODA-LM scores by the profile's judge")
    ax.legend(fontsize=7, loc="upper left")
    methods = list(next(iter(PAPER_A_TABLE1.values())))
    w2 = 0.8 / len(methods)
    for j, meth in enumerate(methods):
        xs = np.arange(len(PAPER_A_TABLE1)) + (j - (len(methods) - 1) / 2) * w2
        bx.bar(xs, [PAPER_A_TABLE1[m][meth] for m in PAPER_A_TABLE1], w2, label=meth)
    bx.set_xticks(range(len(PAPER_A_TABLE1)), list(PAPER_A_TABLE1), fontsize=8)
    bx.set_ylim(0, 105)
    bx.set_title("paper A, Table 1 (overall, real CODA-LM, GPT judge)")
    bx.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_region_classes(models: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(10, 3.6))
    w = 0.8 / max(len(models), 1)
    for i, (name, e) in enumerate(models.items()):
        pc = e["scores"]["region_perception"]["per_class"]
        xs = np.arange(len(CLASSES)) + (i - (len(models) - 1) / 2) * w
        ax.bar(xs, [pc[c]["score_100"] or 0 for c in CLASSES], w, label=name)
    first = next(iter(models.values()))["scores"]["region_perception"]
    ax.set_xticks(range(len(CLASSES)), [f"{c}\n(n={first['per_class'][c]['n']})" for c in CLASSES], fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("region score (0-100)")
    un = first.get("unscored", 0)
    ax.set_title("region perception per class" + (f" ({un} regions of unmapped names unscored)" if un else ""))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_win_rates(battles: list[dict], path: Path) -> Path:
    import seaborn as sns

    m = win_rate_matrix(battles)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(m), 1.2 + 0.9 * len(m)))
    sns.heatmap(m, annot=True, fmt=".2f", vmin=0, vmax=1, cmap="RdBu_r", center=0.5, ax=ax, cbar_kws={"shrink": 0.8})
    ax.set_xlabel("against")
    ax.set_ylabel("model")
    ax.set_title(f"adjusted win rate (ties count half), {len(battles)} battles")
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_elo(elo: dict, path: Path) -> Path:
    boot = elo["bootstrap"]
    names = sorted(boot, key=lambda n: -boot[n]["median"])
    fig, ax = plt.subplots(figsize=(1.5 + 1.2 * len(names), 3.6))
    xs = np.arange(len(names))
    med = np.array([boot[n]["median"] for n in names])
    lo = np.array([boot[n]["lo"] for n in names])
    hi = np.array([boot[n]["hi"] for n in names])
    ax.errorbar(xs, med, yerr=[med - lo, hi - med], fmt="o", capsize=6, label="bootstrap median, 95% interval")
    ax.scatter(xs + 0.12, [elo["online"][n] for n in names], marker="s", s=25, label="online Elo (file order)")
    ax.scatter(xs - 0.12, [elo["bt"][n] for n in names], marker="^", s=30, label="Bradley-Terry")
    ax.set_xticks(xs, names)
    ax.set_ylabel("rating")
    ax.axhline(1000, color="grey", lw=0.6, ls=":")
    ax.set_title(f"Elo from {elo.get('n_battles', '?')} battles (K=4, initial 1000)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_examples(run_dir, models: dict, path: Path, index: int = 0) -> Path:
    from PIL import Image

    root = coda_lm_root({}, run_dir)
    fig, axes = plt.subplots(len(TASKS), 2, figsize=(13, 3.6 * len(TASKS)), gridspec_kw={"width_ratios": [1, 2.2]})
    for row, task in enumerate(TASKS):
        per_model = {n: runs.read_jsonl(Path(e["predictions"]).parent / "judge" / f"{task}.jsonl") for n, e in models.items()}
        answers = {n: runs.read_jsonl(Path(e["predictions"]) / f"{task}_answer.jsonl") for n, e in models.items()}
        first = next(iter(answers.values()))
        i = min(index, len(first) - 1)
        img_ax, txt_ax = axes[row]
        img_path = root / first[i]["image"]
        if img_path.is_file():
            with Image.open(img_path) as im:
                img_ax.imshow(im.convert("RGB"))
        img_ax.set_title(f"{task} #{first[i]['question_id']}", fontsize=9)
        img_ax.axis("off")
        lines = [f"Q: {first[i]['question']}", "", f"Reference: {next(iter(per_model.values()))[i]['reference']}", ""]
        for n in answers:
            rating = per_model[n][i]["rating"]
            lines.append(f"{n} [{'failed' if rating is None else rating}/10]: {answers[n][i]['answer']}")
        txt_ax.text(0, 1, "\n".join(textwrap.fill(ln, 120) if ln else "" for ln in lines), va="top", ha="left",
                    fontsize=7.5, family="monospace", transform=txt_ax.transAxes)
        txt_ax.axis("off")
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_validity(rows: list[dict], validity: dict, path: Path) -> Path:
    gp = [r for r in rows if r["task"] == "general_perception" and r["rating"] is not None]
    ds = [r for r in rows if r["task"] == "driving_suggestion" and r["rating"] is not None]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.6, 1]})
    rng = np.random.default_rng(0)
    f1 = np.array([r["object_f1"] for r in gp])
    rt = np.array([r["rating"] for r in gp], dtype=float)
    ax.scatter(f1 + rng.uniform(-0.01, 0.01, len(f1)), rt + rng.uniform(-0.15, 0.15, len(rt)), s=8, alpha=0.4)
    for name in sorted({r["perturbation"] for r in gp}):
        sel = [r for r in gp if r["perturbation"] == name]
        ax.scatter(np.mean([r["object_f1"] for r in sel]), np.mean([r["rating"] for r in sel]), s=60, marker="D",
                   edgecolor="k", zorder=3)
        ax.annotate(name, (np.mean([r["object_f1"] for r in sel]), np.mean([r["rating"] for r in sel])),
                    xytext=(5, -10), textcoords="offset points", fontsize=7)
    ax.set_xlabel("object-F1 of the perturbed reference (by construction)")
    ax.set_ylabel("judge rating")
    ax.set_title(f"general perception: Spearman {validity['spearman']:.2f} (n={validity['n']})", fontsize=9)
    names = ["intact advice", "flipped advice"]
    bx.bar(names, [np.mean([r["rating"] for r in ds if r["perturbation"] == n] or [0]) for n in names],
           color=["#2ca02c", "#d62728"])
    bx.set_ylim(0, 10.5)
    bx.set_title("driving suggestion: mean rating", fontsize=9)
    fig.suptitle(f"does the {validity['judge'].get('backend')} judge follow correctness?", fontsize=10)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def headline_models(run_dir, models: dict) -> dict:
    """The models of the bar charts and the example panel: all but SPIN's intermediate rounds (the
    rounds figure of notebook 04 shows every round; the battles and Elo keep every model)."""
    inner = {r["name"] for rows in rounds_of(run_dir).values() for r in rows[1:-1]}
    return {n: e for n, e in models.items() if n not in inner}


def figures_from_run(run_dir) -> list[Path]:
    rd = runs.resolve_run_dir(run_dir)
    models = evaluated_models(rd)
    if not models:
        return []
    out = runs.stage_dir(rd, "evaluate") / SUB
    main = headline_models(rd, models)
    paths = [plot_scores(main, out / "scores.png"), plot_region_classes(main, out / "region_per_class.png"),
             plot_examples(rd, main, out / "examples.png")]
    ev = runs.read_metrics(rd).get("evaluate") or {}
    battles_path = rd / "evaluate" / "battles.jsonl"
    if battles_path.is_file() and ev.get("elo"):
        battles = runs.read_jsonl(battles_path)
        if battles:
            paths += [plot_win_rates(battles, out / "win_rates.png"), plot_elo(ev["elo"], out / "elo.png")]
    vrows = rd / "evaluate" / "judge_validity.jsonl"
    if vrows.is_file() and (ev.get("coda_lm") or {}).get("judge_validity"):
        paths.append(plot_validity(runs.read_jsonl(vrows), ev["coda_lm"]["judge_validity"], out / "judge_validity.png"))
    return paths
