"""Stage 1 (RLOO) and stage 2 (action SFT) of paper B: advantages, the TRL subclass, variance, prompts, figures."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from kit.rl.advantages import best_of_k, compute_advantages, greedy_baseline, group, leave_one_out, no_baseline


# ---- Eq. 1 on hand-made rewards --------------------------------------------------------------------------
def _eq1(rewards):
    """Paper B's Eq. 1 written out literally, one prompt at a time."""
    out = []
    for row in rewards:
        k = len(row)
        out.append([row[i] - sum(row[j] for j in range(k) if j != i) / (k - 1) for i in range(k)])
    return out


def test_leave_one_out_matches_eq1_on_hand_made_rewards():
    rewards = [[1.0, 0.0, 0.5, 0.25], [0.2, 0.2, 0.9, -0.4]]
    got = leave_one_out(torch.tensor(rewards))
    assert torch.allclose(got, torch.tensor(_eq1(rewards)), atol=1e-6)
    # a worked number: first completion of the first prompt: 1 - (0 + 0.5 + 0.25) / 3 = 0.75
    assert got[0, 0].item() == pytest.approx(0.75)


def test_leave_one_out_properties():
    r = torch.rand(5, 8)
    a = leave_one_out(r)
    assert torch.allclose(a.sum(dim=1), torch.zeros(5), atol=1e-5)  # zero-mean per group
    assert torch.allclose(leave_one_out(r + 3.0), a, atol=1e-5)      # a shared offset cancels
    assert torch.allclose(a, r.shape[1] / (r.shape[1] - 1) * (r - r.mean(dim=1, keepdim=True)), atol=1e-5)
    same = torch.full((2, 4), 0.7)
    assert torch.count_nonzero(leave_one_out(same)) == 0  # equal rewards: zero gradient


def test_leave_one_out_skips_unscorable_like_trl():
    r = torch.tensor([[1.0, float("nan"), 0.0, 0.5]])
    a = leave_one_out(r)
    assert a[0, 1].item() == 0.0
    assert a[0, 0].item() == pytest.approx(1.0 - (0.0 + 0.5) / 2)


def test_greedy_and_no_baseline():
    r = torch.tensor([[1.0, 0.0], [0.5, 0.7]])
    assert torch.allclose(greedy_baseline(r, torch.tensor([0.5, 0.6])), torch.tensor([[0.5, -0.5], [-0.1, 0.1]]))
    assert torch.equal(no_baseline(r), r)
    assert torch.equal(compute_advantages(r, "none"), r)
    with pytest.raises(ValueError, match="greedy_rewards"):
        compute_advantages(r, "greedy")
    with pytest.raises(ValueError, match="rloo.baseline"):
        compute_advantages(r, "critic")
    with pytest.raises(ValueError, match="one reward per prompt"):
        greedy_baseline(r, torch.tensor([0.1, 0.2, 0.3]))


def test_group_and_best_of_k():
    flat = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.4, 0.8])
    g = group(flat, 3)
    assert g.shape == (2, 3)
    assert torch.allclose(best_of_k(g), torch.tensor([0.9, 0.8]))
    with pytest.raises(ValueError, match="multiple of k=4"):
        group(flat, 4)


def test_per_epoch_aggregates_steps():
    from kit.rl.results import per_epoch

    log = [{"step": s, "epoch": s // 3, "mean_reward": 0.1 * s, "best_of_k": 0.2 * s} for s in range(6)]
    rows = per_epoch(log)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[0]["steps"] == 3
    assert rows[1]["mean_reward"] == pytest.approx(0.4)
    assert rows[1]["best_of_k"] == pytest.approx(0.8)


# ---- stage 2 prompt ----------------------------------------------------------------------------------------
def test_stage2_prompt_contains_stage1_description_and_paper_question():
    from kit.labels import ACTION_PROMPT
    from kit.labels import stage2_prompt
    from kit.stages.action_sft import action_rows

    desc = "a red light ahead and a car stopped in the right lane"
    p = stage2_prompt(desc)
    assert desc in p and ACTION_PROMPT in p

    class S:  # the fields of kit.data.bdd_oia.BddSample that the rows use
        id = "x1"
        actions = [0, 1, 0, 0]
        frame_paths = [Path("clip/0.jpg"), Path("clip/1.jpg")]

    P = {"rloo": {"frames": 1}}
    row = action_rows([S()], {"x1": desc}, P)[0]
    text = row["prompt"][0]["content"][-1]["text"]
    assert desc in text
    assert row["images"] == [Path("clip/1.jpg")]  # the last frame, left on disk
    assert row["completion"][0]["content"][0]["text"] == "Action: stop."
    with pytest.raises(KeyError, match="x2"):
        action_rows([type("T", (S,), {"id": "x2"})()], {"x1": desc}, P)


# ---- the TRL subclass on a tiny VLM + tiny CLIP reward ------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from kit.models.clip import build_tiny_clip
    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.reward.clip_reward import CLIPReward

    rng = random.Random(0)
    words = "the car stops at a red light road is clear green turn left right lane person".split()
    d = build_tiny_vlm(tmp_path_factory.mktemp("vlm"), [" ".join(rng.choices(words, k=10)) for _ in range(200)],
                       cfg={"num_layers": 2, "vision_layers": 1})
    model = AutoModelForImageTextToText.from_pretrained(d)
    proc = AutoProcessor.from_pretrained(d)
    reward = CLIPReward(build_tiny_clip(seed=0))
    from kit.train.rows import vlm_row

    rows = []
    for i in range(4):
        row = vlm_row([Image.new("RGB", (64, 64), (60 * i, 120, 200 - 40 * i))], "Describe the driving scene.")
        row["id"] = f"s{i}"
        rows.append(row)
    return model, proc, reward, rows


def _P(**rloo):
    from kit.params import load_profile

    # beta 0: the advantages below are Eq. 1 of the bare CLIP rewards (with beta > 0 TRL subtracts the KL first)
    over = {"rloo.k": 3, "rloo.batch_size": 2, "rloo.epochs": 1, "rloo.max_new_tokens": 6, "rloo.lr": 1e-3,
            "rloo.beta": 0.0}
    over.update({f"rloo.{k}": v for k, v in rloo.items()})
    return load_profile("tiny", over)


@pytest.mark.parametrize("baseline", ["greedy", "none"])
def test_kl_penalty_with_another_baseline_fails_clearly(tiny, tmp_path, baseline):
    from kit.rl.trainer import make_trainer
    from kit.stages.rloo import trainer_settings

    model, proc, reward, rows = tiny
    with pytest.raises(ValueError, match="rloo.beta=0"):
        make_trainer(model, proc, reward, rows, tmp_path, *trainer_settings(_P(baseline=baseline, beta=0.05)))


@pytest.mark.parametrize("baseline", ["rloo", "greedy", "none"])
def test_trainer_uses_the_selected_baseline(tiny, tmp_path, baseline):
    import copy

    from kit import runs
    from kit.rl.trainer import make_trainer
    from kit.stages.rloo import trainer_settings

    model, proc, reward, rows = tiny
    P = _P(baseline=baseline)
    trainer, ckpt = make_trainer(copy.deepcopy(model), proc, reward, rows, tmp_path, *trainer_settings(P))
    assert ckpt is None
    trainer.model.train()
    out = trainer._generate_and_score_completions([dict(rows[0]) for _ in range(3)] + [dict(rows[1]) for _ in range(3)])
    lb = trainer.last_batch
    assert lb["rewards"].shape == (2, 3) and torch.isfinite(lb["rewards"]).all()
    expected = compute_advantages(lb["rewards"], baseline, lb["greedy_rewards"])
    assert torch.allclose(out["advantages"].cpu().view(2, 3), expected, atol=1e-5)
    if baseline == "rloo":  # TRL's own inline advantage is Eq. 1
        assert torch.allclose(out["advantages"].cpu().view(2, 3), leave_one_out(lb["rewards"]), atol=1e-5)
    assert (lb["greedy_rewards"] is not None) == (baseline == "greedy")
    # TRL hands the dataset's id column to the reward: its cache is keyed by sample, not by pixels
    assert {k[:2] for k in reward._cache} >= {("id", "s0"), ("id", "s1")}
    rec = trainer.reward_log[-1]
    assert rec["best_of_k"] >= rec["mean_reward"] - 1e-6
    assert not (tmp_path / "reward_log.jsonl").exists()  # records are written with checkpoints, not every step
    trainer.flush_logs()
    assert len(runs.read_jsonl(tmp_path / "reward_log.jsonl")) == len(trainer.reward_log)
    assert (tmp_path / "samples.jsonl").is_file()
    assert len(trainer.samples_log[-1]["completions"]) == 3


def test_train_rloo_logs_epochs_and_resumes(tiny, tmp_path):
    import copy

    from kit import runs
    from kit.rl.trainer import train_rloo
    from kit.stages.rloo import trainer_settings

    model, proc, reward, rows = tiny
    P = _P(epochs=2)
    res = train_rloo(copy.deepcopy(model), proc, reward, rows, tmp_path, *trainer_settings(P))
    assert [e["epoch"] for e in res["per_epoch"]] == [0, 1]
    assert all(e["steps"] == 2 for e in res["per_epoch"])  # 4 prompts / 2 per step
    assert (Path(res["checkpoint"]) / "config.json").is_file()
    n = len(runs.read_jsonl(tmp_path / "reward_log.jsonl"))
    again = train_rloo(copy.deepcopy(model), proc, reward, rows, tmp_path, *trainer_settings(P))  # finished: resumes, no new steps
    assert len(again["reward_log"]) == n == 4


def test_gradient_variance_on_shared_batches(tiny, tmp_path):
    import copy

    from kit.rl.trainer import make_trainer
    from kit.rl.variance import gradient_variance
    from kit.stages.rloo import trainer_settings

    model, proc, reward, rows = tiny
    trainer, _ = make_trainer(copy.deepcopy(model), proc, reward, rows, tmp_path, *trainer_settings(_P()))
    v = gradient_variance(trainer, rows, n_prompts=2, repeats=2, max_coords=50_000)
    assert set(v["estimators"]) == {"rloo", "greedy", "none", "a2c"}
    assert v["n_coords"] == 50_000 < v["n_params"]
    for e in v["estimators"].values():
        assert math.isfinite(e["within_prompt"]) and e["within_prompt"] >= 0
        assert len(e["per_prompt_within"]) == 2
        assert e["relative_within"] == pytest.approx(e["within_prompt"] / e["mean_grad_sq_norm"])
    assert v["estimators"]["rloo"]["within_ratio_to_rloo"] == pytest.approx(1.0)
    assert trainer.reward_log == [] and not (tmp_path / "reward_log.jsonl").exists()  # measurement leaves no trace
    # the same batches for every estimator: without a2c, the other three's numbers do not move
    trainer2, _ = make_trainer(copy.deepcopy(model), proc, reward, rows, tmp_path / "b", *trainer_settings(_P()))
    w = gradient_variance(trainer2, rows, n_prompts=2, repeats=2, max_coords=50_000,
                          baselines=("rloo", "greedy", "none"))
    for b in ("rloo", "greedy", "none"):
        assert w["estimators"][b]["within_prompt"] == pytest.approx(v["estimators"][b]["within_prompt"], rel=1e-5)


def test_a2c_critic_learns_the_mean_reward_of_a_fixed_batch():
    from kit.rl.critic import critic_baseline, fit_critic

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(5, 16, generator=g)                      # five prompts' image embeddings
    means = torch.tensor([-0.3, 0.0, 0.2, 0.5, 0.9])
    rewards = means.repeat_interleave(8) + 0.1 * torch.randn(40, generator=g)
    critic = fit_critic(feats.repeat_interleave(8, dim=0), rewards, seed=0)
    values = critic(feats).detach()
    per_prompt = rewards.view(5, 8).mean(1)
    assert torch.allclose(values, per_prompt, atol=0.02)         # V(s) -> each prompt's mean reward
    untrained = fit_critic(feats.repeat_interleave(8, dim=0), rewards, steps=0, seed=0)(feats).detach()
    assert (values - per_prompt).abs().mean() < (untrained - per_prompt).abs().mean() / 5
    adv = critic_baseline(rewards.view(5, 8), values)
    assert adv.mean(1).abs().max() < 0.02 and adv.var() < rewards.var() / 2   # centred, less spread
    again = fit_critic(feats.repeat_interleave(8, dim=0), rewards, seed=0)(feats).detach()
    assert torch.equal(values, again)                            # its own generator: reproducible


# ---- figures from files alone -------------------------------------------------------------------------------
def test_figures_from_run_files_only(tmp_path):
    from kit import runs
    from kit.rl.figures import figures_from_run

    sd = tmp_path / "rloo"
    log = [{"step": s, "epoch": s // 4, "mean_reward": 0.2 + 0.01 * s, "best_of_k": 0.3 + 0.01 * s,
            "baseline": "rloo"} for s in range(12)]
    runs.write_jsonl(sd / "reward_log.jsonl", log)
    runs.write_jsonl(sd / "samples.jsonl", [{"step": 0, "rewards": [0.1, 0.4, 0.2, 0.3],
                                             "advantages": leave_one_out(torch.tensor([[0.1, 0.4, 0.2, 0.3]]))[0].tolist()}])
    runs.write_json(sd / "variance.json", {"n_prompts": 2, "repeats": 2, "k": 4, "estimators": {
        b: {"within_prompt": v, "total": 2 * v, "relative_within": v / 4}
        for b, v in (("rloo", 1.0), ("greedy", 3.0), ("none", 9.0), ("a2c", 2.0))}})
    recs = [{"id": str(i), "description": "d", "clip_score": 0.1 * i, "clip_match": i > 5} for i in range(10)]
    runs.write_jsonl(sd / "descriptions_test.jsonl", recs)
    paths = figures_from_run(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["clip_scores.png", "gradient_variance.png", "reward_advantage.png", "reward_curves.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


def test_stage2_action_figure_has_no_reason_panels(tmp_path):
    """Stage 2 answers actions only: its figure counts and scores the four actions from the records."""
    from kit.rl.figures import plot_actions

    rng = random.Random(0)
    recs = [{"gt_actions": [rng.randint(0, 1) for _ in range(4)], "pred_actions": [0, 1, 0, 0]} for _ in range(20)]
    p = plot_actions(recs, tmp_path / "actions.png", "stage 2")
    assert p.is_file() and p.stat().st_size > 5000


def test_clip_summary_reports_specificity_and_collapse():
    from kit.reward.metrics import clip_summary

    fits = [{"description": f"d{i}", "clip_score": 0.9, "clip_match": True, "clip_score_other_image": 0.2}
            for i in range(4)]
    generic = [{"description": "the same", "clip_score": 0.7, "clip_match": True, "clip_score_other_image": 0.7}
               for _ in range(4)]
    a, b = clip_summary(fits), clip_summary(generic)
    assert a["specificity"] == pytest.approx(0.7) and a["distinct"] == 1.0
    assert b["specificity"] == pytest.approx(0.0) and b["distinct"] == 0.25
    assert clip_summary([{"description": "x", "clip_score": 0.5, "clip_match": False}])["specificity"] is None
