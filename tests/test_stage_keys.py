"""One rule for reuse (kit.keys), stage by stage, on a miniature toy run: a stage reuses a
saved result only under the same key; a changed setting or a changed upstream model trains afresh
in its own folder; and the same seed and the same inputs give the same metrics.

Slow-ish (a few minutes): every Track B training stage runs several times with a few steps.
"""
import shutil
from pathlib import Path

import pytest

from kit import runs
from kit.params import load_profile

pytestmark = pytest.mark.slow

MINI = {
    "data.toy.splits": {"train": 24, "val": 12, "test": 12},
    "data.toy.coda_splits": {"Train": 3, "Val": 2, "Test": 2, "Mini": 2},
    "pretrain.clip_epochs": 1, "pretrain.vlm_epochs": 1, "pretrain.vlm_show": 2, "pretrain.vlm_caption_tokens": 8,
    "clip_finetune.epochs": 1, "clip_finetune.splits": {"train": 40, "val": 16, "test": 16},
    "clip_finetune.compare_targets": False, "clip_finetune.table_samples": 4,
    # two steps, no warm-up: with the profile's warmup_ratio the first of two steps has lr 0, and a
    # changed lr would log the same losses
    "sft.epochs": 1, "sft.max_steps": 2, "sft.warmup_ratio": 0.0, "sft.logging_steps": 1, "eval.max_new_tokens": 8,
    "rloo.train_samples": 4, "rloo.epochs": 1, "rloo.k": 2, "rloo.max_new_tokens": 4, "rloo.eval_samples": 4,
    "rloo.describe_train_samples": 4, "rloo.variance_prompts": 1, "rloo.variance_repeats": 2,
    "action_sft.epochs": 1, "action_sft.max_new_tokens": 4,
}


def P(**changes):
    return load_profile("tiny", {**MINI, **{k.replace("__", "."): v for k, v in changes.items()}})


@pytest.fixture(scope="module")
def rd(tmp_path_factory):
    from kit.notebook import seed_everything
    from kit.stages.prepare_clip import run_prepare_clip
    from kit.stages.prepare_data import run_prepare_data
    from kit.stages.prepare_vlm import run_prepare_vlm

    seed_everything(0)
    rd = tmp_path_factory.mktemp("keys") / "run"
    run_prepare_data(P(), rd)
    run_prepare_clip(P(), rd)
    run_prepare_vlm(P(), rd)
    return rd


def _history(model):
    """A fine-tune's per-epoch train/val losses (beside its best model)."""
    h = runs.read_json(Path(model["checkpoint"]).parent / "history.json")["history"]
    return [(e["train_loss"], e["val_loss"]) for e in h]


def _metrics(rd, stage):
    return runs.read_metrics(rd)[stage]


def test_keyed_training_trains_once_per_key(tmp_path, capsys):
    # (the key itself: tests/test_coda_track_a.py::test_stage_key_follows_settings_and_upstream_content)
    from kit.keys import keyed_training, marked_key

    calls = []

    def train(out):
        calls.append(out)
        (out / "final").mkdir(exist_ok=True)
        return {"checkpoint": str(out / "final"), "loss": len(calls), "steps": 12}

    a = keyed_training(tmp_path / "ck", "k1", train, stage="sft_baseline")
    assert "reused" not in capsys.readouterr().out
    b = keyed_training(tmp_path / "ck", "k1", train, stage="sft_baseline")
    said = capsys.readouterr().out                 # a reuse says so, with when and how long it trained
    assert said.startswith("sft_baseline: reused the training of key k1 (") and ", 12 steps)" in said
    # when it trained is the result's own record, not the file's time: a copied run folder keeps it
    import os

    os.utime(tmp_path / "ck" / "k1" / "train_result.json", (0, 0))
    keyed_training(tmp_path / "ck", "k1", train, stage="sft_baseline")
    assert f"trained {b['trained_at']}," in capsys.readouterr().out and not b["trained_at"].startswith("1970")
    c = keyed_training(tmp_path / "ck", "k2", train)
    assert (a["reused"], b["reused"], c["reused"]) == (False, True, False) and len(calls) == 2
    assert b["loss"] == a["loss"] and Path(c["checkpoint"]).parent.name == "k2"
    assert marked_key(a["checkpoint"]) == "k1" and marked_key(c["checkpoint"]) == "k2"


def test_clip_finetune_retrains_for_a_new_setting_or_a_new_starting_clip(rd):
    from kit.stages.clip_finetune import run_clip_finetune
    from kit.stages.prepare_clip import run_prepare_clip

    a = run_clip_finetune(P(), rd)["models"]["reason"]
    again = run_clip_finetune(P(), rd)["models"]["reason"]
    assert again["reused"] and again["checkpoint"] == a["checkpoint"] and again["test"] == a["test"]
    b = run_clip_finetune(P(clip_finetune__lr=1e-2), rd)["models"]["reason"]
    assert not b["reused"] and b["checkpoint"] != a["checkpoint"] and _history(b) != _history(a)
    # another pretrained CLIP upstream (same path, re-pretrained): the old fine-tune is not reused
    run_prepare_clip(P(pretrain__clip_epochs=2), rd)
    c = run_clip_finetune(P(), rd)["models"]["reason"]
    assert not c["reused"] and c["key"] not in (a["key"], b["key"])


def test_sft_baseline_retrains_for_a_new_setting_or_a_new_base_model(rd):
    from kit.stages.prepare_vlm import run_prepare_vlm
    from kit.stages.sft_baseline import run_sft_baseline

    a = run_sft_baseline(P(), rd)
    assert not a["reused"] and run_sft_baseline(P(), rd)["reused"]
    b = run_sft_baseline(P(sft__lr=1e-2), rd)
    assert not b["reused"] and b["checkpoint"] != a["checkpoint"] and b["train_loss"] != a["train_loss"]
    run_prepare_vlm(P(pretrain__vlm_lr=1e-3), rd)  # the base model re-pretrained in place
    c = run_sft_baseline(P(), rd)
    assert not c["reused"] and c["key"] not in (a["key"], b["key"]) and c["train_loss"] != a["train_loss"]


def test_rloo_retrains_for_a_new_setting_or_reward_and_is_deterministic(rd):
    from kit.stages.clip_finetune import run_clip_finetune
    from kit.stages.rloo import run_rloo

    run_clip_finetune(P(), rd)
    a = run_rloo(P(), rd)
    assert not a["reused"] and a["steps"] > 0
    a_texts = _rloo_texts(rd, a)
    assert run_rloo(P(), rd)["reused"]
    b = run_rloo(P(rloo__lr=1e-2), rd)  # TRL would have resumed the old checkpoint and run 0 steps
    assert not b["reused"] and b["steps"] == a["steps"] and b["checkpoint"] != a["checkpoint"]
    # another reward model upstream
    run_clip_finetune(P(clip_finetune__lr=1e-2), rd)
    c = run_rloo(P(), rd)
    assert not c["reused"] and c["key"] not in (a["key"], b["key"])
    run_clip_finetune(P(), rd)
    # same seed, same inputs: a fresh training samples the same texts and gets the same rewards, and
    # so does one that skipped the gradient-variance diagnostic (it samples too, but must not move
    # the RNGs training draws from). Rewards agree to float rounding (CPU BLAS may split sums
    # differently from run to run); any shift of the RNG would change the sampled texts themselves.
    shutil.rmtree(Path(a["checkpoint"]).parent)
    fresh = run_rloo(P(), rd)
    assert not fresh["reused"] and fresh["variance"] is not None
    no_diag = run_rloo(P(rloo__variance_prompts=0), rd)
    assert no_diag["variance"] is None and no_diag["key"] != a["key"]
    for again in (fresh, no_diag):
        assert _rloo_texts(rd, again) == a_texts
        assert [e["mean_reward"] for e in again["per_epoch"]] == pytest.approx([e["mean_reward"] for e in a["per_epoch"]],
                                                                               rel=1e-5, abs=1e-7)


def _rloo_texts(rd, res):
    """What a stage-1 run wrote: every step's sampled completions and the greedy eval descriptions."""
    samples = runs.read_jsonl(Path(res["work_dir"]) / "samples.jsonl")
    desc = runs.read_jsonl(rd / "rloo" / f"descriptions_{res['eval']['split']}.jsonl")
    return [s["completions"] for s in samples], [d["description"] for d in desc]


def test_action_sft_follows_stage1_and_is_deterministic(rd):
    from kit.stages.action_sft import run_action_sft
    from kit.stages.clip_finetune import run_clip_finetune
    from kit.stages.rloo import run_rloo

    run_clip_finetune(P(), rd)
    run_rloo(P(), rd)
    a = run_action_sft(P(), rd)
    assert not a["reused"] and a["stage1_checkpoint"] == _metrics(rd, "rloo")["checkpoint"]
    assert run_action_sft(P(), rd)["reused"]
    # a retrained stage 1 (other lr): stage 2 trains again, on its descriptions
    run_rloo(P(rloo__lr=1e-2), rd)
    b = run_action_sft(P(), rd)
    assert not b["reused"] and b["key"] != a["key"] and b["stage1_checkpoint"] != a["stage1_checkpoint"]
    # same seed, same stage 1: a fresh stage 2 gives the same answers and losses
    run_rloo(P(), rd)
    shutil.rmtree(Path(a["checkpoint"]).parent)
    for f in (rd / "action_sft").glob("predictions*"):
        f.unlink()
    fresh = run_action_sft(P(), rd)
    assert not fresh["reused"] and fresh["key"] == a["key"]
    assert fresh["eval"]["action"] == a["eval"]["action"] and fresh["eval"]["n"] == a["eval"]["n"]
    assert [x["loss"] for x in fresh["train_loss"]] == pytest.approx([x["loss"] for x in a["train_loss"]], rel=1e-5)


def test_action_sft_answers_test_with_the_epoch_that_scored_best_on_val(rd):
    from kit.stages.action_sft import run_action_sft
    from kit.stages.clip_finetune import run_clip_finetune
    from kit.stages.rloo import run_rloo

    run_clip_finetune(P(), rd)
    run_rloo(P(), rd)
    m = run_action_sft(P(action_sft__epochs=3), rd)
    curve = m["val_curve"]
    assert [r["epoch"] for r in curve] == [1, 2, 3] and all(0 <= r["val_action_mF1"] <= 1 for r in curve)
    best = max(curve, key=lambda r: (r["val_action_mF1"], r["step"]))
    chosen = m["trained_checkpoint"] if best is curve[-1] else best["checkpoint"]
    assert m["checkpoint"] == chosen and Path(chosen).is_dir()
    # test was answered by that checkpoint, and each epoch's val answers are kept for a rerun
    assert Path(chosen).name in runs.read_json(rd / "action_sft" / "predictions.meta.json")["tag"]
    assert sorted(p.name for p in (rd / "action_sft" / "val").glob("checkpoint-*.jsonl")) == \
        sorted(f"{Path(r['checkpoint']).name}.jsonl" for r in curve)
    again = run_action_sft(P(action_sft__epochs=3), rd)
    assert again["reused"] and again["val_curve"] == curve and again["eval"] == m["eval"]
    # the paper's way: the last epoch, no val scoring
    last = run_action_sft(P(action_sft__epochs=3, action_sft__select_checkpoint="last"), rd)
    assert last["val_curve"] == [] and last["checkpoint"] == m["trained_checkpoint"]
