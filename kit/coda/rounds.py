"""SPIN's data and report for notebook 04 (paper A, Section 2.2): which questions a round asks, the
preference pairs, the mix of rounds, paper A's Table 1, and the figures, redrawn from the run
directory alone.

    sample_items(items, n, seed)                 -> the round's questions
    build_pairs(items, own, round_, source)      -> (pairs, dropped identical)
    mix_rounds(current, previous)                -> what the round trains on
    table1(run_dir)                              -> paper A's Table 1 on this run, paper A's numbers beside
    figures_from_run(run_dir)                    -> spin/figures/{rounds,dpo}.png

SPIN, as its authors implemented it: chosen = the dataset's answer,
rejected = the model's own greedy answer; round r trains on its pairs and round r-1's, shuffled.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Mapping, Sequence

from kit import runs
from kit.coda.paper import PAPER_A_TABLE1
from kit.coda.results import evaluated_models
from kit.data.coda_vqa import TASKS, VqaItem

STAGE = "spin"
VARIANTS = {  # variant -> (the notebook 03 stage it starts from, model name prefix, Table 1 row)
    "original": ("coda_sft", "spin-orig", "Ours w/ original data"),
    "synthetic": ("coda_sft_synth", "spin-synth", "Ours w/ synthetic data"),
}
# paper A's columns for the two variants: its "w/ 30k" is CODA-LM's own QA pairs, "w/ 200k" adds the synthetic set
PAPER_COLUMN = {"Direct": "Direct", "SFT": "SFT", "Ours w/ original data": "Ours w/ 30k",
                "Ours w/ synthetic data": "Ours w/ 200k"}


def round_stage(variant: str, r: int) -> str:
    """The folder and metrics key of one round: spin/<variant>/round_<r>."""
    return f"{STAGE}/{variant}/round_{r}"


def model_name(variant: str, r: int) -> str:
    return f"{VARIANTS[variant][1]} r{r}"


def sample_items(items: Mapping[str, Sequence[VqaItem]], n: int | None, seed: str) -> list[VqaItem]:
    """`n` questions drawn without replacement from every task's items pooled (all when n is None or
    larger), in a fixed order for a given seed string (random.Random hashes strings the same in
    every process)."""
    pool = [it for t in TASKS for it in items.get(t, [])]
    if n is None or n >= len(pool):
        return pool
    return random.Random(seed).sample(pool, int(n))


def normalise(text: str) -> str:
    return " ".join((text or "").split())


def build_pairs(items: Sequence[VqaItem], own: Sequence[str], round_: int, source: str) -> tuple[list[dict], int]:
    """SPIN pairs: chosen = the dataset's answer, rejected = the model's own. A pair whose two texts are
    the same (whitespace aside) teaches nothing and is dropped; the count is returned."""
    if len(items) != len(own):
        raise ValueError(f"build_pairs: {len(items)} questions but {len(own)} own answers")
    pairs, same = [], 0
    for it, o in zip(items, own):
        if it.answer is None:
            raise ValueError(f"{it.id} ({it.sample_id}): no reference answer; SPIN needs the training split's answers")
        if normalise(it.answer) == normalise(o):
            same += 1
            continue
        pairs.append({"id": f"r{round_}:{source}:{it.id}", "round": round_, "source": source, "task": it.task,
                      "sample_id": it.sample_id, "image": str(it.image_path), "question": it.question,
                      "chosen": it.answer, "rejected": o})
    return pairs, same


def mix_rounds(current: Sequence[Mapping], previous: Sequence[Mapping], seed: str) -> list[dict]:
    """Round r's training pairs: its own and round r-1's, shuffled together (SPIN's iteration mix)."""
    out = [dict(p) for p in current] + [dict(p) for p in previous]
    random.Random(seed).shuffle(out)
    return out


# --- report --------------------------------------------------------------------------------------

def rounds_of(run_dir) -> dict[str, list[dict]]:
    """{variant: [round 0 (the start model), round 1, ...]}, each {"round", "name", "scores", ...} from metrics.json."""
    m = runs.read_metrics(run_dir)
    out = {}
    for variant, info in (m.get(STAGE) or {}).get("variants", {}).items():
        start = (m.get(info["start"]) or {}).get("coda_lm") or {}
        rows = [{"round": 0, "name": start.get("name"), "scores": start.get("scores")}] if start.get("scores") else []
        for r, key in enumerate(info["rounds"], 1):
            e = m.get(key) or {}
            if (e.get("coda_lm") or {}).get("scores"):
                rows.append({"round": r, "name": e["coda_lm"]["name"], "scores": e["coda_lm"]["scores"],
                             "train": e.get("train") or {}, "pairs": e.get("pairs") or {},
                             "battles": e.get("battles") or {}, "regenerated": e.get("regenerated")})
        out[variant] = rows
    return out


def table1(run_dir):
    """Paper A's Table 1 on this run (Direct, SFT, Ours w/ original data, Ours w/ synthetic data: the
    three tasks and the overall score on 0-100) with paper A's overall scores beside it (pandas)."""
    import pandas as pd


    models = evaluated_models(run_dir)
    rounds = rounds_of(run_dir)
    names = {"Direct": "direct", "SFT": "sft"}
    for variant, (_, _, row) in VARIANTS.items():
        if len(rounds.get(variant) or []) > 1:
            names[row] = rounds[variant][-1]["name"]
    out = []
    for row, name in names.items():
        if name not in models:
            continue
        s = models[name]["scores"]
        out.append({"method": row, "model": name, **{t: s[t]["score_100"] for t in TASKS}, "overall": s["overall_100"],
                    **{f"paper A, {base}": t[PAPER_COLUMN[row]] for base, t in PAPER_A_TABLE1.items()}})
    return pd.DataFrame(out).set_index("method") if out else pd.DataFrame()


def _series(rows, key):
    return [r["round"] for r in rows], [r["scores"][key]["score_100"] if key in TASKS else r["scores"]["overall_100"]
                                        for r in rows]


def plot_rounds(run_dir, path: Path) -> Path:
    """The judge's score per round, one line per variant (round 0: the SFT model it started from),
    Direct and SFT as reference lines; one panel for the overall score and one per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    rounds = rounds_of(run_dir)
    models = evaluated_models(run_dir)
    keys = ["overall", *TASKS]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), sharex=True)
    for ax, key in zip(axes, keys):
        for i, (variant, rows) in enumerate(rounds.items()):
            if rows:
                xs, ys = _series(rows, key)
                ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"{variant} (from {rows[0]['name']})")
        for name, style in (("direct", ":"), ("sft", "--")):
            if name in models:
                s = models[name]["scores"]
                ax.axhline(s["overall_100"] if key == "overall" else s[key]["score_100"], ls=style, color="grey",
                           lw=1, label=name)
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.set_xlabel("SPIN round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("judge score (0-100, eval split)")
    axes[0].legend(fontsize=7)
    fig.suptitle("paper A's iterative fine-tuning: the score after each round", fontsize=11)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def plot_dpo(run_dir, path: Path) -> Path:
    """DPO's own curves in every round (TRL's logs): loss, reward margin, reward accuracy against the
    step counted across rounds, one colour per variant, rounds separated by dotted lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = rounds_of(run_dir)
    panels = [("loss", "DPO loss (ln 2 = no preference)"), ("margin", "reward margin (chosen - rejected)"),
              ("accuracy", "reward accuracy (chosen > rejected)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for i, (variant, rows) in enumerate(rounds.items()):
        offset = 0
        for row in rows[1:]:
            curve = (row.get("train") or {}).get("curve") or []
            if not curve:
                continue
            for ax, (k, _) in zip(axes, panels):
                ax.plot([offset + c["step"] for c in curve], [c.get(k) for c in curve], marker=".", color=f"C{i}",
                        label=variant if row["round"] == 1 else None)
            offset += max(c["step"] for c in curve)
            for ax in axes:
                ax.axvline(offset, ls=":", color=f"C{i}", lw=0.8)
    for ax, (_, title) in zip(axes, panels):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimizer step (rounds one after another)")
        ax.grid(alpha=0.3)
    axes[0].axhline(0.6931, color="grey", lw=0.8)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return runs.save_figure(fig, path)


def figures_from_run(run_dir) -> list[Path]:
    rd = runs.resolve_run_dir(run_dir)
    if not any(len(v) > 1 for v in rounds_of(rd).values()):
        return []
    out = runs.figures_dir(rd, STAGE)
    return [plot_rounds(rd, out / "rounds.png"), plot_dpo(rd, out / "dpo.png")]
