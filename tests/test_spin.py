"""Notebook 04's SPIN rounds (kit.coda.rounds, kit.stages.spin, kit.train.dpo): the pairs, the mix of
rounds, that round r's reference is round r-1's model, resume after a kill between and inside rounds,
retraining on a changed setting, and Table 1 and the figures redrawn from files alone."""
import math
import shutil

import pytest

from kit import runs
from kit.coda.rounds import build_pairs, mix_rounds, sample_items
from kit.data.coda_vqa import VqaItem
from kit.models.device import model_spec


def _item(task, qid, answer):
    return VqaItem(task=task, question_id=qid, image=f"img{qid}.jpg", question="What should the ego car do?",
                   answer=answer, sample_id=f"train_{qid:04d}", image_path=None)


def test_pairs_drop_identical_answers_and_count_them():
    items = [_item("driving_suggestion", 0, "Stop, the light is red."),
             _item("driving_suggestion", 1, "Keep moving forward."),
             _item("general_perception", 2, "A car is ahead.")]
    own = ["Stop,  the light is red. ", "Turn left now.", "A truck is ahead."]
    pairs, same = build_pairs(items, own, 2, "train")
    assert same == 1 and len(pairs) == 2
    assert [p["chosen"] for p in pairs] == ["Keep moving forward.", "A car is ahead."]
    assert [p["rejected"] for p in pairs] == ["Turn left now.", "A truck is ahead."]
    assert pairs[0]["id"] == "r2:train:driving_suggestion:1" and pairs[0]["round"] == 2
    with pytest.raises(ValueError, match="2 questions but 1 own answers"):
        build_pairs(items[:2], own[:1], 1, "train")
    with pytest.raises(ValueError, match="no reference answer"):
        build_pairs([_item("general_perception", 5, None)], ["x"], 1, "train")


def test_rounds_are_mixed_as_spin_does():
    cur = [{"id": f"r2:{i}"} for i in range(5)]
    prev = [{"id": f"r1:{i}"} for i in range(4)]
    mixed = mix_rounds(cur, prev, "0:2:mix")
    assert sorted(p["id"] for p in mixed) == sorted(p["id"] for p in cur + prev)
    assert mixed == mix_rounds(cur, prev, "0:2:mix")              # the same seed, the same order
    assert [p["id"] for p in mixed] != [p["id"] for p in cur + prev]  # shuffled together, not appended
    assert mix_rounds(cur, [], "x") and len(mix_rounds(cur, [], "x")) == 5


def test_questions_are_drawn_afresh_per_round_without_repeats():
    items = {"general_perception": [_item("general_perception", i, "a") for i in range(10)],
             "driving_suggestion": [_item("driving_suggestion", i, "b") for i in range(10, 20)]}
    a, b = sample_items(items, 8, "0:1:train"), sample_items(items, 8, "0:2:train")
    assert len(a) == 8 and len({x.id for x in a}) == 8
    assert [x.id for x in a] == [x.id for x in sample_items(items, 8, "0:1:train")]
    assert [x.id for x in a] != [x.id for x in b]
    assert len(sample_items(items, None, "s")) == 20 and len(sample_items(items, 50, "s")) == 20


# --- the rounds, on a small toy CODA-LM with a small VLM -------------------------------------------

SETTINGS = {"coda.max_new_tokens": {"general_perception": 12, "region_perception": 10, "driving_suggestion": 10},
            "coda.batch_size": 8, "coda.eval_samples": 3,
            "coda_sft.max_steps": 3, "coda_sft.batch_size": 4, "coda_sft.logging_steps": 1,
            "spin.rounds": 2, "spin.variants": ["original"], "spin.prompts_per_round": 12, "spin.batch_size": 4,
            "spin.epochs": 2, "spin.lr": 1.0e-3, "spin.logging_steps": 1}


def _params(**extra):
    from kit.params import load_profile

    return load_profile("tiny", {**SETTINGS, **extra})


def _sft_run(rd, **extra):
    """A run directory with a toy CODA-LM (Train 6 images, Test 3), a random tiny VLM and notebook
    03's SFT on it (3 steps): what notebook 04 starts from."""
    import torch

    from kit.data import toyworld
    from kit.data.coda_vqa import vqa_for
    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.models.vlm import tiny_vlm_dir
    from kit.stages.coda import run_coda_sft

    torch.set_num_threads(1)
    P = _params(**extra)
    root = rd / "prepare" / "data" / "coda_lm"
    toyworld.generate_coda_lm(root, {**P["data"]["toy"], "coda_splits": {"Train": 6, "Test": 3}, "coda_unlabeled": 0},
                              progress=False)
    runs.record_metrics(rd, "prepare", {"datasets": {"coda_lm_root": str(root)}})
    texts = [it.answer for its in vqa_for(P, root / "CODA-LM" / "Train").values() for it in its] * 3
    build_tiny_vlm(tiny_vlm_dir(rd), texts + list(P["coda"]["questions"].values()), image_size=64,
                   cfg={"vocab_size": 600, "num_layers": 2, "vision_layers": 2})
    run_coda_sft(P, rd)
    return rd


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    return _sft_run(tmp_path_factory.mktemp("spin_run"))


def _digest(P, rd, ckpt):
    from kit.models.vlm import load_vlm
    from kit.train.dpo import weights_digest

    return weights_digest(load_vlm(model_spec(P), rd, ckpt)[0])


def test_round_r_refers_to_round_r_minus_1_and_resumes_after_a_kill(sft_run, tmp_path, monkeypatch):
    """Killed inside round 2's DPO (after its first epoch's checkpoint): the rerun reuses round 1,
    keeps round 2's own answers, resumes DPO from the checkpoint, and each round's reference and
    starting weights are exactly the previous round's model."""
    import trl

    from kit.stages.spin import run_spin

    rd = tmp_path / "run"
    shutil.copytree(sft_run, rd, symlinks=True)
    m0 = runs.read_metrics(rd)
    for stage in ("coda_sft",):  # the copy's paths point into the copy
        e = m0[stage]["coda_lm"]
        runs.record_metrics(rd, stage, {"coda_lm": {k: e[k].replace(str(sft_run), str(rd))
                                                    for k in ("checkpoint", "predictions")}})
    P = _params()
    real_step = trl.DPOTrainer.training_step

    def dies_in_round_2_epoch_2(self, *a, **kw):
        # round 2's first step after its epoch-1 checkpoint (2 epochs: max_steps is twice an epoch)
        if "round_2" in str(self.args.output_dir) and self.state.global_step > self.state.max_steps // 2:
            raise KeyboardInterrupt("killed")
        return real_step(self, *a, **kw)

    monkeypatch.setattr(trl.DPOTrainer, "training_step", dies_in_round_2_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_spin(P, rd, "original")
    monkeypatch.setattr(trl.DPOTrainer, "training_step", real_step)
    r2 = rd / "spin" / "original" / "round_2"
    own = sorted((r2 / "own_answers").glob("train_*.jsonl"))
    assert own and list(r2.glob("checkpoints/*/checkpoint-*"))
    mtimes = {p: p.stat().st_mtime_ns for p in own}

    run_spin(P, rd, "original")
    m = runs.read_metrics(rd)
    t1, t2 = m["spin/original/round_1"]["train"], m["spin/original/round_2"]["train"]
    assert t1["reused"] is True and t2["reused"] is False
    assert {p: p.stat().st_mtime_ns for p in own} == mtimes           # own answers not generated again
    res2 = runs.read_json(r2 / "checkpoints" / t2["key"] / "train_result.json")
    assert res2["resumed_from"] and "checkpoint-" in res2["resumed_from"]

    # the weights: round 1 starts from and refers to SFT; round 2 to round 1's final model
    sft_digest = _digest(P, rd, m["coda_sft"]["coda_lm"]["checkpoint"])
    r1_digest = _digest(P, rd, t1["checkpoint"])
    assert t1["start_digest"] == t1["ref_digest"] == sft_digest
    assert t2["start_digest"] == t2["ref_digest"] == r1_digest != sft_digest
    _check_one_pair(t1["one_pair"])  # recorded by the first run's round 1, kept when reused
    _check_one_pair(t2["one_pair"])  # and by the resumed round 2
    assert _digest(P, rd, t2["checkpoint"]) != r1_digest

    # DPO's own curve: ln 2 at the start (policy = reference), accuracy logged; pairs mixed with round 1's
    curve = runs.read_json(rd / "spin" / "original" / "round_1" / "checkpoints" / t1["key"] / "train_result.json")["curve"]
    assert math.isclose(curve[0]["loss"], math.log(2), abs_tol=1e-3)
    assert all(0.0 <= c["accuracy"] <= 1.0 for c in curve)
    p1, p2 = m["spin/original/round_1"]["pairs"], m["spin/original/round_2"]["pairs"]
    assert p2["from_previous"] == p1["new"] and p2["trained_on"] == p2["new"] + p1["new"]
    assert sum(p1["dropped_identical"].values()) + p1["new"] == 12
    assert set(m["spin/original/round_2"]["battles"]) == {"vs spin-orig r1", "vs sft", "failed"}

    # a changed setting retrains every round, in a new folder; the old rounds stay as they were
    run_spin(_params(**{"spin.beta": 0.2}), rd, "original")
    m2 = runs.read_metrics(rd)
    assert m2["spin/original/round_1"]["train"]["key"] != t1["key"]
    assert m2["spin/original/round_1"]["train"]["reused"] is False
    assert (rd / "spin" / "original" / "round_1" / "checkpoints" / t1["key"] / "final").is_dir()

    # fewer rounds: the third round's metrics of a longer run would be stale, so they are dropped
    runs.record_metrics(rd, "spin/original/round_3", {"coda_lm": {"name": "stale", "scores": {"overall_100": 1}}})
    run_spin(_params(**{"spin.beta": 0.2}), rd, "original")
    assert "spin/original/round_3" not in runs.read_metrics(rd)


def test_table1_and_figures_from_files_alone(sft_run, tmp_path):
    """After the rounds and notebook 07's battles, Table 1 and every figure come back from the run
    directory with every model folder deleted."""
    from kit.coda.rounds import table1
    from kit.figures import figures_from_run
    from kit.stages.coda_evaluate import run_coda_evaluate
    from kit.stages.spin import run_spin_all

    rd = tmp_path / "run"
    shutil.copytree(sft_run, rd, symlinks=True)
    e = runs.read_metrics(rd)["coda_sft"]["coda_lm"]
    runs.record_metrics(rd, "coda_sft", {"coda_lm": {k: e[k].replace(str(sft_run), str(rd)) for k in ("checkpoint", "predictions")}})
    P = _params(**{"spin.epochs": 1, "spin.rounds": 1})
    run_spin_all(P, rd)
    run_coda_evaluate(P, rd)
    for d in list(rd.rglob("checkpoints")) + [rd / "prepare" / "models"]:
        shutil.rmtree(d, ignore_errors=True)
    t = table1(rd)
    assert list(t.index) == ["SFT", "Ours w/ original data"]
    m = runs.read_metrics(rd)
    assert t.loc["Ours w/ original data", "overall"] == m["spin/original/round_1"]["coda_lm"]["scores"]["overall_100"]
    assert t.loc["SFT", "paper A, MiniCPM-V-8B"] == 60.90
    names = {p.name for p in figures_from_run(rd)}
    assert {"rounds.png", "dpo.png", "elo.png", "win_rates.png", "scores.png"} <= names
    assert "spin-orig r1" in m["evaluate"]["elo"]["bootstrap"]


def _check_one_pair(p):
    """DPO's loss for one pair, from its four log-probs, equals TRL's (notebook 04's equation cell),
    and the trained policy is not its reference (else the loss is ln 2 whatever the formula)."""
    import math

    margin = (p["logp_chosen"] - p["ref_logp_chosen"]) - (p["logp_rejected"] - p["ref_logp_rejected"])
    assert abs(margin) > 1e-3
    by_hand = math.log1p(math.exp(-p["beta"] * margin))  # -log sigmoid(beta * margin)
    assert by_hand == pytest.approx(p["trl_loss"], abs=1e-4)


def test_lora_round_refers_to_the_previous_adapter(tmp_path):
    """With LoRA the policy is the SFT adapter, DPOTrainer's frozen `ref` adapter is its copy, and
    the round saves its own adapter only."""
    from kit.models.vlm import load_vlm
    from kit.stages.spin import run_spin
    from kit.train.dpo import weights_digest

    lora = {"models.lora.enabled": True, "spin.rounds": 1, "spin.epochs": 1}
    rd = _sft_run(tmp_path / "run", **lora)
    P = _params(**lora)
    run_spin(P, rd, "original")
    m = runs.read_metrics(rd)
    t = m["spin/original/round_1"]["train"]
    sft_ckpt = m["coda_sft"]["coda_lm"]["checkpoint"]
    sft_adapter = weights_digest(load_vlm(model_spec(P), rd, sft_ckpt)[0], "default")
    assert t["start_digest"] == t["ref_digest"] == sft_adapter
    final = load_vlm(model_spec(P), rd, t["checkpoint"])[0]
    assert hasattr(final, "peft_config") and list(final.peft_config) == ["default"]
    assert weights_digest(final, "default") != sft_adapter
    assert not (rd / "spin" / "original" / "round_1" / "checkpoints" / t["key"] / "final" / "ref").exists()
    _check_one_pair(t["one_pair"])

    # the SFT model must be the one the current settings make: a changed SFT setting stops SPIN, naming it
    with pytest.raises(FileNotFoundError, match="rerun notebook 03"):
        run_spin(_params(**lora, **{"coda_sft.lr": 1.0e-3}), rd, "original")
