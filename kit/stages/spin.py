"""Notebook 04, Track A: paper A's iterative fine-tuning (its Section 2.2) as SPIN rounds, each a
DPO run with TRL's DPOTrainer. TRL has no SPIN trainer: a round is generate, build pairs, DPO.

    run_spin_all(P, run_dir)          -> every variant in `spin.variants`; metrics["spin"]
    run_spin(P, run_dir, variant)     -> spin/<variant>/round_<r>/, metrics["spin/<variant>/round_<r>"]

Variants (kit.coda.rounds.VARIANTS): `original` starts from notebook 03's SFT on Train and asks Train's
questions (Table 1's "Ours w/ original data"); `synthetic` starts from SFT on Train + notebook 01's
synthetic set (paper A's model 1) and asks questions of both ("Ours w/ synthetic data").

Round r = 1..spin.rounds, from model r-1 (round 0: the variant's SFT model):
1. questions: `spin.prompts_per_round` drawn afresh for the round. Synthetic: a `synthetic_share` of
   them come from whole synthetic images, which from round 2 on are re-captioned by model r-1 and
   rewritten (the synthesis pipeline's caption and writer steps; `spin.regenerate`), so the
   dataset answers themselves improve with the model, as paper A's iterative synthesis does;
2. model r-1 answers them greedily (`own_answers/`, resumable);
3. pairs: chosen = the dataset's answer, rejected = model r-1's; identical texts dropped and counted;
   mixed with round r-1's pairs (`spin.mix_previous`);
4. DPO from model r-1, reference = model r-1 (full fine-tune: a frozen copy loaded from its
   checkpoint; LoRA: its adapter, which DPOTrainer copies to a frozen `ref` adapter);
5. the eval split answered and judged; battles against model r-1 and SFT.

Reuse: a round trains in `checkpoints/<key>/`, its key = the DPO settings + model r-1's identity +
the pairs, so a killed run resumes at the last finished round (inside a round the own answers and the
rewritten data are kept, and DPO resumes from its last epoch checkpoint), and a changed setting
retrains that round and every later one, never reusing a model trained otherwise.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from kit import dist, runs
from kit.coda import rounds as spin_rounds
from kit.coda.sft import current_sft_key, data_id, evaluate_model, split_items
from kit.data.coda_vqa import TASKS, VqaItem, read_answers, vqa_for
from kit.eval.generate import generate_records
from kit.judge.battles import run_battles
from kit.judge.elo import win_rates
from kit.judge.factory import make_judge
from kit.keys import artifact_id, keyed_dir, keyed_training, mark, marked_key, stage_key
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, lora_config, vlm_settings
from kit.params import params_hash
from kit.synth import pipeline
from kit.synth.pipeline import pool_images
from kit.synth.writer import make_writer
from kit.train.config import train_config
from kit.train.dpo import train_dpo
from kit.train.rows import preference_row


def dpo_config(P: Mapping) -> dict:
    """The DPO settings that decide what a round trains (its key); logging_steps is added for the trainer."""
    return train_config(P["spin"], P["seed"], extra=("adam_beta2", "max_length", "beta", "loss_type"))


def _own_answers(model, processor, items: list[VqaItem], P: Mapping, out_dir: Path, model_id: str, source: str) -> list[str]:
    """Greedy answers of the round's starting model, per task (each task's answer length), in `items`' order."""
    by_id = {}
    for task in TASKS:
        its = [it for it in items if it.task == task]
        if not its:
            continue
        # reused only for the same model, the same questions on the same images, and the same batching
        meta = {"key": model_id, "data": data_id({task: its}), "batch_size": int(P["coda"]["batch_size"])}
        recs = generate_records(
            model, processor, its, out_dir / f"{source}_{task}.jsonl", meta,
            items=lambda part: [([it.load_image()], it.question) for it in part],
            records=lambda part, _, outs: [{"id": it.id, "answer": o} for it, o in zip(part, outs)],
            batch_size=int(P["coda"]["batch_size"]), max_new_tokens=int(P["coda"]["max_new_tokens"][task]),
            desc=f"own answers: {source} {task}")
        by_id.update({r["id"]: r["answer"] for r in recs})
    return [by_id[it.id] for it in items]


def _synthetic_source(P: Mapping, run_dir) -> tuple[list[dict], list[Path], Path]:
    """Notebook 01's records with a written QA set, the pool they came from, and its key."""
    m = runs.require_metrics(run_dir, "synthesis", "SPIN's synthetic variant (run notebook 01 first)")
    recs = [r for r in runs.read_jsonl(runs.stage_dir(run_dir, "synthesis") / "records.jsonl") if r.get("output")]
    return recs, pool_images(P, run_dir), Path(m["data_root"])


def _pick_images(records: list[dict], n_items: int, seed: str) -> list[dict]:
    """Whole synthetic images, in a seeded random order, until they hold at least `n_items` questions."""
    import random

    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    out, n = [], 0
    for i in order:
        if n >= n_items:
            break
        out.append(records[i])
        n += 2 + len(records[i]["objects"])
    return out


def _round_synthetic(P, run_dir, rd: Path, records: list[dict], pool, captioner, captioner_id: str | None,
                     synth_key: str) -> tuple[dict[str, list[VqaItem]], dict]:
    """The round's synthetic images as a CODA-LM split under `<round>/synthesis/data`: rewritten by the
    round's starting model when `captioner` is given, else as notebook 01 wrote them."""
    key = stage_key({"synth": {k: v for k, v in P["synth"].items() if k in ("caption", "writer")}},
                    {"synthesis": synth_key, "captioner": captioner_id or "notebook 01",
                     "images": params_hash([r["file_name"] for r in records])})
    info = {"images": len(records), "rewritten": captioner is not None, "key": key}
    if captioner is not None:
        steps = pipeline.Steps(proposer=None, bundle=None, db=None, kb=None, captioner=captioner,
                               writer=make_writer(P["synth"]["writer"], runs.stage_dir(run_dir, "synthesis") / "llm_cache"),
                               cfg=P["synth"])
        new = pipeline.rewrite(steps, records, pool, keyed_dir(rd / "synthesis" / "work", key), desc="rewrite synthetic")
        info["caption_changed"] = sum(a["caption"] != b["caption"] for a, b in zip(records, new))
        info["general_changed"] = sum((a["output"] or {}).get("general_perception") != (b["output"] or {}).get("general_perception")
                                      for a, b in zip(records, new))
        info["without_answer"] = sum(1 for r in new if not r.get("output"))
        records = [r for r in new if r.get("output")]
    out = rd / "synthesis" / "data"
    dist.on_main(_write_marked, records, pool, out, key)
    return vqa_for(P, out / "CODA-LM" / "Train", images=True), info


def _write_marked(records: list[dict], pool, out: Path, key: str) -> None:
    """The split under `out`, unless it is there with this key. The main process decides (inside
    on_main): a process that looked itself could see the main one's fresh mark and skip the broadcast."""
    if marked_key(out) == key:
        return
    pipeline.write_split(records, pool, out)
    mark(out, key, stage="spin")


def _round_battles(P, run_dir, rd: Path, judge, refs, names: dict[str, str]) -> dict:
    """This round's model against the previous one and SFT, on the eval split, both orders."""
    answers = {}
    me = next(iter(names))
    for n, pred in names.items():
        rows = read_answers(pred)
        answers[n] = {t: [r["answer"] for r in rows[t]] for t in TASKS}
        for t in TASKS:
            if len(answers[n][t]) != len(refs[t]):
                raise ValueError(f"{pred}: {t} has {len(answers[n][t])} answers, the eval split {len(refs[t])} "
                                 f"questions; rerun the stage that wrote it ({n}) for params coda.eval_split")
    battles, failed = [], []
    for other in list(names)[1:]:  # this round against each opponent (not the opponents among themselves)
        b, f = run_battles(judge, {me: answers[me], other: answers[other]}, refs, list(P["battles"]["tasks"]),
                           desc=f"{me} vs {other}")
        battles, failed = battles + b, failed + f
    runs.write_jsonl(rd / "battles.jsonl", battles)
    wr = win_rates(battles)["pairs"]
    return {f"vs {o}": {k: wr[me][o][k] for k in ("wins", "losses", "ties", "adjusted_win_rate")}
            for o in list(names)[1:] if o in wr.get(me, {})} | {"failed": len(failed)}


def run_spin(P: Mapping, run_dir, variant: str) -> dict:
    """Every round of one variant (see the module docstring); returns the variant's summary."""
    if variant not in spin_rounds.VARIANTS:
        raise ValueError(f"params spin.variants: unknown variant {variant!r}; expected some of {list(spin_rounds.VARIANTS)}")
    t0 = time.time()
    sp = P["spin"]
    start_stage = spin_rounds.VARIANTS[variant][0]
    start = runs.require_metrics(run_dir, start_stage, f"SPIN's {variant} variant (run notebook 03 first)")["coda_lm"]
    if start.get("train_key") != current_sft_key(P, run_dir, start_stage):
        raise FileNotFoundError(
            f"{runs.resolve_run_dir(run_dir) / 'metrics.json'}: the {start_stage} model there was trained with other "
            f"settings or data than the current ones (its key {start.get('train_key')}); rerun notebook 03 "
            f"({start_stage}) for this profile first, so SPIN starts from the model these settings make")
    train = split_items(P, run_dir, "train")
    refs = split_items(P, run_dir, "eval")
    judge = make_judge(P["judge"], run_dir)
    cfg = dpo_config(P)
    n = sp.get("prompts_per_round")
    share = float(sp["synthetic_share"]) if variant == "synthetic" else 0.0
    if variant == "synthetic":
        records, pool, synth_root = _synthetic_source(P, run_dir)
        synth_key = marked_key(synth_root) or artifact_id(synth_root)
    spec = model_spec(P)
    lora = lora_config(spec) is not None
    seed = int(P["seed"])
    rounds = int(sp["rounds"])
    if rounds < 1:
        raise ValueError(f"params spin.rounds: {rounds}; expected at least 1")
    # this variant's results so far are forgotten and re-recorded round by round as they are made
    # (finished rounds with the same key are reused in seconds): nothing from other settings stays
    runs.forget_metrics(run_dir, [k for k in runs.read_metrics(run_dir) if k.startswith(f"{spin_rounds.STAGE}/{variant}/")]
                        + [(spin_rounds.STAGE, "variants", variant)])
    prev_ckpt, prev_name, prev_pairs = start["checkpoint"], start["name"], []
    prev_pred = start["predictions"]
    model, processor = load_vlm(spec, run_dir, prev_ckpt)
    stages = []
    for r in range(1, rounds + 1):
        stage = spin_rounds.round_stage(variant, r)
        rd = runs.stage_dir(run_dir, stage)
        prev_id = artifact_id(prev_ckpt)
        n_train = None if n is None else int(round(int(n) * (1 - share)))
        asked = {"train": spin_rounds.sample_items(train, n_train, f"{seed}:{r}:train")}
        regen = None
        if variant == "synthetic":
            n_syn = 10 ** 9 if n is None else int(n) - len(asked["train"])
            picked = _pick_images(records, n_syn, f"{seed}:{r}:synthetic")
            rewrite = bool(sp["regenerate"]) and r > 1
            syn_items, regen = _round_synthetic(P, run_dir, rd, picked, pool, (model, processor) if rewrite else None,
                                                prev_id if rewrite else None, synth_key)
            asked["synthetic"] = [it for t in TASKS for it in syn_items[t]]
        pairs, same = [], {}
        for source, its in asked.items():
            own = _own_answers(model, processor, its, P, rd / "own_answers", prev_id, source)
            ps, same[source] = spin_rounds.build_pairs(its, own, r, source)
            pairs += ps
        runs.write_jsonl(rd / "pairs.jsonl", pairs)
        mixed = spin_rounds.mix_rounds(pairs, prev_pairs if sp["mix_previous"] else [], f"{seed}:{r}:mix")
        if not mixed:
            raise ValueError(f"{rd / 'pairs.jsonl'}: round {r} has no pairs: the model's own answers equal every "
                             f"dataset answer ({same} identical); nothing is left for SPIN to prefer")
        key = stage_key({"dpo": cfg, **vlm_settings(spec)},
                        {"model": prev_id, "pairs": params_hash([(p["id"], p["chosen"], p["rejected"], artifact_id(p["image"]))
                                                                 for p in mixed])})

        def train_it(out, ckpt=prev_ckpt, rows=mixed):
            policy, proc = load_vlm(spec, run_dir, ckpt, for_training=True)
            if hasattr(policy, "peft_config") != lora:
                raise ValueError(f"{ckpt}: a {'LoRA adapter' if hasattr(policy, 'peft_config') else 'full model'}, but "
                                 f"params models.lora.enabled is {lora}; SPIN continues the SFT model as it was trained")
            # full fine-tune: a frozen copy of model r-1; LoRA: DPOTrainer copies its adapter to `ref`
            ref = None if lora else load_vlm(spec, run_dir, ckpt)[0]
            return train_dpo(policy, proc, [preference_row([p["image"]], p["question"], p["chosen"], p["rejected"])
                                            for p in rows], out, {**cfg, "logging_steps": sp["logging_steps"]},
                             spec.trainer_precision(), ref_model=ref)

        del model
        tr = keyed_training(rd / "checkpoints", key, train_it, stage=stage, base=prev_ckpt)
        model, processor = load_vlm(spec, run_dir, tr["checkpoint"])
        name = spin_rounds.model_name(variant, r)
        entry = evaluate_model(P, run_dir, stage, model, processor, f"key:{tr['key']}", refs, name=name)
        opponents = {name: entry["predictions"], prev_name: prev_pred}
        sft = runs.read_metrics(run_dir).get("coda_sft", {}).get("coda_lm", {})
        if sft.get("predictions") and sft["name"] not in opponents:
            opponents[sft["name"]] = sft["predictions"]
        battles = _round_battles(P, run_dir, rd, judge, refs, opponents)
        runs.record_metrics(run_dir, stage, {
            "round": r, "variant": variant, "start": prev_name, "battles": battles, "regenerated": regen,
            "pairs": {"new": len(pairs), "dropped_identical": same, "from_previous": len(mixed) - len(pairs),
                      "trained_on": len(mixed), "asked": {k: len(v) for k, v in asked.items()}},
            "train": {k: tr.get(k) for k in ("key", "checkpoint", "steps", "n_rows", "seconds", "reused", "curve",
                                             "start_digest", "ref_digest", "one_pair")}})
        stages.append(stage)
        prev_ckpt, prev_name, prev_pairs, prev_pred = tr["checkpoint"], name, pairs, entry["predictions"]
        # the summary lists finished rounds only, so a kill leaves no half-made round in Table 1
        summary = {"start": start_stage, "rounds": stages,
                   "models": [spin_rounds.model_name(variant, i) for i in range(1, r + 1)],
                   "config": cfg, "complete": r == rounds, "seconds": round(time.time() - t0, 2)}
        runs.forget_metrics(run_dir, [(spin_rounds.STAGE, "variants", variant)])
        runs.record_metrics(run_dir, spin_rounds.STAGE, {"variants": {variant: summary}})
    return summary


def run_spin_all(P: Mapping, run_dir) -> dict:
    """Every variant in `spin.variants`, then the figures; variants no longer listed are forgotten."""
    variants = list(P["spin"]["variants"])
    m = runs.read_metrics(run_dir)
    gone = [v for v in (m.get(spin_rounds.STAGE) or {}).get("variants", {}) if v not in variants]
    runs.forget_metrics(run_dir, [k for k in m if any(k.startswith(f"{spin_rounds.STAGE}/{v}/") for v in gone)]
                        + [(spin_rounds.STAGE, "variants", v) for v in gone])
    out = {v: run_spin(P, run_dir, v) for v in variants}
    figs = dist.on_main(spin_rounds.figures_from_run, run_dir)
    runs.record_metrics(run_dir, spin_rounds.STAGE, {"figures": [str(f) for f in figs]})
    return out
