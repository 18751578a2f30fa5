"""CLIP reward: pairs, the left/right flip, the reward against a plain computation, multi-frame
averaging, the cache, judging, the fine-tune loop (resume, best checkpoint) and figures."""
from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kit import labels as L
from kit.models import clip as kclip
from kit.models.device import model_spec
from kit.reward.clip_reward import CLIPReward, completion_text
from kit.reward.pairs import make_pairs, swap_left_right, true_texts

P_TINY = {"device": "cpu", "models": {"clip": {"name": "tiny", "pretrained": None}}}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return kclip.build_tiny_clip(seed=0)


def _samples(n=300, seed=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        reasons = [0] * L.N_REASONS
        for j in rng.sample(range(L.N_REASONS), rng.randint(1, 4)):
            reasons[j] = 1
        actions = [int(rng.random() < 0.4) for _ in range(L.N_ACTIONS)]
        actions[rng.randrange(4)] = 1
        out.append(SimpleNamespace(id=f"s{i:04d}", image_path=f"/img/s{i:04d}.jpg", actions=actions, reasons=reasons))
    return out


def _rand_img(seed, size=(80, 45)):
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a)


# ---- pairs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["reason", "action"])
def test_pairs_negatives_are_never_true_texts(target):
    samples = _samples()
    by_id = {s.id: set(true_texts(s, target)) for s in samples}
    ps = make_pairs(samples, target, {"train": 300, "val": 60, "test": 100})
    for _, split in ps.items():
        for p in split:
            if p.label == 1:
                assert p.text in by_id[p.id] and p.text == p.anchor
            else:
                assert p.text not in by_id[p.id] and p.text != p.anchor
    assert {p.text for _, s in ps.items() for p in s} <= set(L.REASONS if target == "reason" else L.ACTION_TEXTS)


def test_pairs_are_stratified_sized_and_seed_42_reproducible():
    samples = _samples()
    sizes = {"train": 400, "val": 100, "test": 200}
    a = make_pairs(samples, "reason", sizes)
    b = make_pairs(list(reversed(samples)), "reason", sizes)  # input order does not matter
    assert a.stats["seed"] == 42 and a.stats["stratified_on"] == ["label+text"]
    assert {k: len(v) for k, v in a.items()} == sizes
    assert [p.to_dict() for p in a.test] == [p.to_dict() for p in b.test]
    assert [p.to_dict() for p in a.train] == [p.to_dict() for p in b.train]
    c = make_pairs(samples, "reason", sizes, seed=7)
    assert [p.to_dict() for p in c.test] != [p.to_dict() for p in a.test]
    # stratified: each split has the same share of positives and the same text mix as the whole
    for _, split in a.items():
        assert abs(np.mean([p.label for p in split]) - 0.5) <= 0.01
    full = Counter((p.label, p.text) for _, s in a.items() for p in s)
    test = Counter((p.label, p.text) for p in a.test)
    total, n_test = sum(full.values()), len(a.test)
    for key, n in full.items():
        assert abs(test[key] - n * n_test / total) <= 1.5


def test_pairs_shrink_proportionally_when_data_is_short():
    ps = make_pairs(_samples(40), "action", {"train": 1400, "val": 200, "test": 400})
    got = {k: len(v) for k, v in ps.items()}
    assert sum(got.values()) == ps.stats["available_pairs"]
    assert got["test"] == pytest.approx(2 * got["val"], abs=1)


# ---- flip -----------------------------------------------------------------------------------------

def test_flip_swaps_left_and_right_in_the_text():
    assert swap_left_right("Solid line on the left") == "Solid line on the right"
    assert swap_left_right("On the right-turn lane") == "On the left-turn lane"
    assert swap_left_right("Left lane, turn RIGHT") == "Right lane, turn LEFT"
    assert swap_left_right("Traffic light is green") == "Traffic light is green"
    assert swap_left_right("leftover rightful") == "leftover rightful"  # whole words only
    for r in L.REASONS:
        assert swap_left_right(swap_left_right(r)) == r
        if "left" in r:
            assert swap_left_right(r) in L.REASONS  # the label space is closed under the flip


def test_flip_pair_mirrors_the_image():
    from kit.reward.images import flip_pair

    img = torch.zeros(3, 4, 10, dtype=torch.uint8)
    img[0, 0, 0] = 255
    out, text = flip_pair(img, "Obstacles on the left lane")
    assert out[:, 0, 9].tolist() == [255, 0, 0] and out[:, 0, 0].tolist() == [0, 0, 0]
    assert text == "Obstacles on the right lane"


def test_batch_augment_draws_torchvisions_boxes_and_applies_its_colour_adjustments(tiny):
    """BatchAugment is torchvision's RandomResizedCrop + ColorJitter done on the whole batch: its
    boxes keep the area share and aspect range asked for, and its colour step equals torchvision's
    adjust_brightness, adjust_contrast and adjust_saturation applied in that order."""
    import torchvision.transforms.functional as TF

    from kit.reward.images import BatchAugment

    aug = BatchAugment(tiny, {"random_resized_crop_scale": [0.3, 0.6], "color_jitter": 0.0}, seed=1)
    lo, hi = 0.75 * tiny.image_hw[1] / tiny.image_hw[0], tiny.image_hw[1] / tiny.image_hw[0] / 0.75
    for _ in range(200):
        top, left, h, w = aug.crop_box(128, 192)
        assert 0 <= top and top + h <= 128 and 0 <= left and left + w <= 192
        assert 0.3 * 0.9 <= h * w / (128 * 192) <= 0.6 * 1.1 and lo * 0.9 <= w / h <= hi * 1.1
    # the same seed draws the same boxes; the state resumes the sequence
    a, b = BatchAugment(tiny, {"random_resized_crop_scale": [0.3, 0.6]}, seed=3), \
        BatchAugment(tiny, {"random_resized_crop_scale": [0.3, 0.6]}, seed=3)
    a.crop_box(128, 192)
    b.set_state(a.state())
    assert a.crop_box(128, 192) == b.crop_box(128, 192)

    hw = tiny.image_hw
    imgs = [torch.randint(0, 256, (3, *hw), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
            for i in range(4)]
    aug = BatchAugment(tiny, {"random_resized_crop_scale": [1.0, 1.0], "color_jitter": 0.4}, seed=0)
    state = aug.state()
    got = aug(imgs) * aug.std + aug.mean
    # replay the factors BatchAugment drew (after its crop draws) through torchvision
    replay = BatchAugment(tiny, {"random_resized_crop_scale": [1.0, 1.0], "color_jitter": 0.4}, seed=0)
    replay.set_state(state)
    for im in imgs:
        assert replay.crop_box(*im.shape[-2:]) == (0, 0, *hw)
    f = replay._uniform(0.6, 1.4, 3 * len(imgs)).view(3, len(imgs))
    for i, im in enumerate(imgs):
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(im.float() / 255, float(f[0, i])),
                                                       float(f[1, i])), float(f[2, i]))
        assert torch.allclose(got[i], want, atol=1e-5)
    assert not torch.allclose(got[0], imgs[0].float() / 255, atol=1e-2)  # it did jitter


# ---- the reward -------------------------------------------------------------------------------------

@torch.no_grad()
def _plain(bundle, frames, text):
    """Paper B's reward written out: mean of normalized frame embeddings . normalized text embedding."""
    m = bundle.model
    e = torch.nn.functional.normalize(m.encode_image(torch.stack([bundle.preprocess(f) for f in frames])), dim=-1)
    t = torch.nn.functional.normalize(m.encode_text(bundle.tokenizer([text])), dim=-1)[0]
    return float(e.mean(0) @ t)


def test_reward_equals_plain_computation_and_caches_images(tiny):
    r = CLIPReward(tiny)
    k = 4
    imgs = [_rand_img(i) for i in range(3)]
    texts = ["Action: stop. Reason: Traffic light is not green.", "a car ahead", "Road is clear", "turn left"]
    # TRL repeats each prompt k times; the k copies are equal but distinct PIL objects
    images = [[imgs[i].copy()] for i in range(3) for _ in range(k)]
    completions = [[{"role": "assistant", "content": texts[j]}] for _ in range(3) for j in range(k)]
    got = r(prompts=[None] * len(images), completions=completions, images=images)
    want = [_plain(tiny, images[n], texts[n % k]) for n in range(len(images))]
    assert got == pytest.approx(want, abs=1e-5)
    assert r.misses == 3 and r.hits == 3 * k - 3
    again = r(prompts=None, completions=completions, images=images)  # next epoch: all from the cache
    assert again == pytest.approx(got, abs=1e-6) and r.misses == 3
    uncached = CLIPReward(tiny, use_cache=False)(completions=completions, images=images)
    assert uncached == pytest.approx(got, abs=1e-5)
    # texts are encoded in length-sorted batches and put back in their own places
    for tbs in (1, 3):
        assert CLIPReward(tiny, text_batch_size=tbs)(completions=completions, images=images) == pytest.approx(got, abs=1e-5)


def test_reward_keys_the_cache_by_the_dataset_id_column_without_reading_pixels(tiny, monkeypatch):
    import kit.reward.clip_reward as cr

    k = 3
    imgs = [_rand_img(30 + i) for i in range(2)]
    images = [[imgs[i].copy()] for i in range(2) for _ in range(k)]
    ids = [f"scene-{i}" for i in range(2) for _ in range(k)]
    completions = ["Road is clear", "Traffic light is green", "stop"] * 2
    want = CLIPReward(tiny, use_cache=False)(completions=completions, images=images)

    def no_checksum(img):
        raise AssertionError("the pixels were checksummed although the call carried ids")

    monkeypatch.setattr(cr, "image_key", no_checksum)
    r = CLIPReward(tiny)
    got = r(prompts=None, completions=completions, images=images, id=ids)  # TRL passes dataset columns as kwargs
    assert got == pytest.approx(want, abs=1e-5)
    assert (r.misses, r.hits) == (2, 2 * k - 2)
    assert r(completions=completions, images=images, id=ids) == pytest.approx(got, abs=1e-6) and r.misses == 2
    # an id names a clip: the same id with a different frame list is another key, not a stale hit
    two = r(completions=["stop"], images=[[imgs[1], imgs[0]]], id=["scene-0"])[0]
    assert r.misses == 4 and two == pytest.approx(_plain(tiny, [imgs[1], imgs[0]], "stop"), abs=1e-5)
    with pytest.raises(ValueError, match="ids"):
        r.clip_score(images[:2], completions[:2], ids=["only-one"])


def test_reward_averages_frames(tiny):
    r = CLIPReward(tiny)
    f1, f2, f3 = _rand_img(10), _rand_img(11), _rand_img(12)
    text = "A dashed white line is on the left."
    one = [r.clip_score([[f]], [text], kind="cosine")[0] for f in (f1, f2, f3)]
    many = r(completions=[text], images=[[f1, f2, f3]])[0]
    assert many == pytest.approx(np.mean(one), abs=1e-5)
    assert many == pytest.approx(_plain(tiny, [f1, f2, f3], text), abs=1e-5)
    # a PIL image alone counts as a one-frame list
    assert r.clip_score([f1], [text], kind="cosine") == pytest.approx([one[0]], abs=1e-6)


def test_probability_match_and_bounded_cache(tiny):
    r = CLIPReward(tiny, cache_size=2, threshold=0.5)
    imgs = [_rand_img(20 + i) for i in range(5)]
    texts = ["stop"] * 5
    cos = np.array(r.clip_score(imgs, texts, kind="cosine"))
    prob = np.array(r.clip_score(imgs, texts))
    scale = float(tiny.model.logit_scale.detach().exp())
    assert prob == pytest.approx(1 / (1 + np.exp(-cos * scale)), abs=1e-5)
    assert r.clip_match(imgs, texts) == [bool(p > 0.5) for p in prob]
    assert len(r._cache) <= 2
    fresh = CLIPReward(tiny).clip_score(imgs, texts, kind="cosine")
    assert fresh == pytest.approx(list(cos), abs=1e-6)


def test_completion_formats_and_errors(tiny):
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "Action: stop."}]) == "Action: stop."
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "Action:"}, {"type": "text", "text": "stop."}]}]
    assert completion_text(parts) == "Action: stop."
    r = CLIPReward(tiny)
    with pytest.raises(KeyError, match="images"):
        r(prompts=["p"], completions=["c"])
    with pytest.raises(ValueError, match="texts"):
        r.clip_score([_rand_img(1)], ["a", "b"])


# ---- judging ----------------------------------------------------------------------------------------

def test_binary_metrics_match_sklearn_definitions():
    from kit.reward.metrics import binary_metrics

    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.7, 0.4]
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (3, 1, 1, 3)
    assert m["accuracy"] == pytest.approx(6 / 8) and m["precision"] == pytest.approx(3 / 4)
    assert m["recall"] == pytest.approx(3 / 4) and 0.5 < m["auroc"] < 1.0
    assert binary_metrics([0, 1], [0.1, 0.9])["auroc"] == 1.0


# ---- fine-tune loop ---------------------------------------------------------------------------------

def _color_world(tmp_path, n=48):
    """Images that are red or green on the left or right half, with matching reason texts."""
    from kit.reward.pairs import Pair

    pairs = []
    texts = {("red", "left"): "red on the left", ("red", "right"): "red on the right",
             ("green", "left"): "green on the left", ("green", "right"): "green on the right"}
    for i in range(n):
        col, side = ["red", "green"][i % 2], ["left", "right"][(i // 2) % 2]
        img = Image.new("RGB", (64, 36), (128, 128, 128))
        x0 = 0 if side == "left" else 32
        img.paste((220, 20, 20) if col == "red" else (20, 200, 20), (x0, 0, x0 + 32, 36))
        path = tmp_path / f"c{i}.png"
        img.save(path)
        wrong = texts[("green" if col == "red" else "red", side)]
        pairs += [Pair(f"c{i}", str(path), texts[(col, side)], 1, texts[(col, side)]),
                  Pair(f"c{i}", str(path), wrong, 0, texts[(col, side)])]
    return pairs


_FT_CFG = {"epochs": 3, "batch_size": 16, "lr": 2e-3, "weight_decay": 0.01, "grad_clip": 1.0,
           "plateau_factor": 0.2, "plateau_patience": 3, "early_stop_patience": 7, "flip": "swap_text",
           "random_resized_crop_scale": [0.9, 1.0], "color_jitter": 0.1, "logit_bias": 0.0}


def test_finetune_trains_keeps_best_and_resumes(tmp_path):
    from kit.reward.finetune import finetune_clip
    from kit.reward.images import ImageStore
    from kit.reward.loss import score_pairs

    torch.set_num_threads(1)
    pairs = _color_world(tmp_path)
    train, val = pairs[:64], pairs[64:]
    cfg = _FT_CFG
    b = kclip.build_tiny_clip(seed=0)
    res = finetune_clip(b, train, val, tmp_path / "ft", cfg, seed=0)
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
    assert res["best_val_auroc"] == max(h["val_auroc"] for h in hist)
    assert hist[-1]["train_loss"] < hist[1]["train_loss"] or res["best_val_auroc"] > hist[0]["val_auroc"]
    # the best checkpoint loads through the one loader and scores like the in-memory model
    store = ImageStore.for_bundle([p.image_path for p in val], b)
    loaded = kclip.load_clip(model_spec(P_TINY), tmp_path, checkpoint=res["checkpoint"])
    assert loaded.model.logit_bias is not None
    s1, s2 = score_pairs(b, val, store), score_pairs(loaded, val, store)
    assert np.allclose(s1["prob"], s2["prob"], atol=1e-5)
    again = finetune_clip(kclip.build_tiny_clip(seed=0), train, val, tmp_path / "ft", cfg, seed=0)
    assert again.get("resumed") and again["best_epoch"] == res["best_epoch"]


def test_finetune_killed_after_an_epoch_resumes_to_the_same_model(tmp_path, monkeypatch):
    """A run killed after epoch 2 and started again continues from last.pt and ends where the
    uninterrupted run ends: same history, same weights (the shuffle, the flips and the augmentations'
    random state are all saved)."""
    from kit.reward import finetune as ft

    torch.set_num_threads(1)
    pairs = _color_world(tmp_path)
    train, val = pairs[:64], pairs[64:]
    cfg = {**_FT_CFG, "random_resized_crop_scale": [0.5, 1.0], "color_jitter": 0.3}  # more randomness to replay
    whole = ft.finetune_clip(kclip.build_tiny_clip(seed=0), train, val, tmp_path / "whole", cfg, seed=0)

    save = ft._atomic_torch_save

    class Killed(Exception):
        pass

    def save_then_die(obj, path):
        save(obj, path)
        if obj["epoch"] == 2:
            raise Killed

    monkeypatch.setattr(ft, "_atomic_torch_save", save_then_die)
    with pytest.raises(Killed):
        ft.finetune_clip(kclip.build_tiny_clip(seed=0), train, val, tmp_path / "cut", cfg, seed=0)
    monkeypatch.setattr(ft, "_atomic_torch_save", save)
    b = kclip.build_tiny_clip(seed=0)
    resumed = ft.finetune_clip(b, train, val, tmp_path / "cut", cfg, seed=0)
    strip = lambda hist: [{k: v for k, v in h.items() if k != "seconds"} for h in hist]  # noqa: E731
    assert strip(resumed["history"]) == strip(whole["history"])
    want = kclip.build_tiny_clip(seed=0)
    ft._load_weights(want, tmp_path / "whole" / "best")
    for (name, a), (_, w) in zip(b.model.state_dict().items(), want.model.state_dict().items()):
        assert torch.equal(a, w), name


def test_in_batch_negatives_label_every_image_against_every_text_of_the_batch(tmp_path, tiny):
    from kit.reward.finetune import finetune_clip
    from kit.reward.images import BatchAugment, ImageStore, PairDataset
    from kit.reward.loss import pair_loss

    pairs = _color_world(tmp_path, n=8)
    truths = {p.image_path: {p.anchor} for p in pairs}
    cfg = {"random_resized_crop_scale": [1.0, 1.0], "color_jitter": 0.0}
    store = ImageStore.for_bundle([p.image_path for p in pairs], tiny)
    ds = PairDataset(pairs, store, flip="swap_text", seed=0, truths={k: frozenset(v) for k, v in truths.items()})
    items = [ds[i] for i in range(len(pairs))]
    for (x, text, y, truth), p in zip(items, pairs):
        flipped = text != p.text
        assert truth == ({swap_left_right(p.anchor)} if flipped else {p.anchor})
        assert (text in truth) == bool(y)      # the pair's own label agrees with the image's truths
    assert any(it[1] != p.text for it, p in zip(items, pairs))  # some pairs were flipped

    x = BatchAugment(tiny, cfg)([it[0] for it in items])
    texts, y, truth = [it[1] for it in items], torch.tensor([it[2] for it in items]), [it[3] for it in items]
    loss, paper = pair_loss(tiny.model, tiny, x, texts, y, truth)
    with torch.no_grad():
        img = tiny.model.encode_image(x, normalize=True)
        txt = tiny.model.encode_text(tiny.tokenizer(texts), normalize=True)
        logits = img @ txt.T * tiny.model.logit_scale.exp()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        want_paper = bce(logits.diagonal(), y)
        grid_target = torch.tensor([[float(t in tr) for t in texts] for tr in truth])
        # the batch repeats texts; the loss counts each distinct text once per image
        keep = [texts.index(t) for t in sorted(set(texts))]
        g, gt = logits[:, keep], grid_target[:, keep]
        # positives and negatives of the grid weigh half each
        want_grid = 0.5 * bce(g[gt > 0], gt[gt > 0]) + 0.5 * bce(g[gt == 0], gt[gt == 0])
    assert float(paper) == pytest.approx(float(want_paper), abs=1e-5)
    assert float(loss.detach()) == pytest.approx(float(want_paper + want_grid), abs=1e-5)
    loss_plain, paper_plain = pair_loss(tiny.model, tiny, x, texts, y)
    assert float(loss_plain.detach()) == pytest.approx(float(want_paper), abs=1e-5)

    with pytest.raises(ValueError, match="in_batch_negatives"):
        finetune_clip(kclip.build_tiny_clip(seed=0), pairs, pairs, tmp_path / "ft",
                      {"in_batch_negatives": True}, seed=0)


def test_figures_from_files_only(tmp_path):
    from kit import runs
    from kit.reward.figures import figures_from_run

    rd = tmp_path / "run"
    td = rd / "clip_finetune" / "reason"
    hist = [{"epoch": e, "train_loss": None if e == 0 else 1.0 / (e + 1), "val_loss": 0.8 - 0.1 * e,
             "val_auroc": 0.6 + 0.1 * e, "lr": 1e-3 if e < 2 else 2e-4, "seconds": 1.0} for e in range(4)]
    runs.write_json(td / "checkpoints" / "k1" / "history.json", {"done": True, "history": hist})
    rng = np.random.default_rng(0)
    recs = [{"id": str(i), "text": "t", "label": i % 2, "anchor": "t", "prob": float(rng.random()),
             "cos": 0.1, "pretrained_prob": 1.0, "pretrained_cos": float(rng.random())} for i in range(40)]
    for sp in ("val", "test"):
        runs.write_jsonl(td / f"scores_{sp}.jsonl", recs)
    row = {"avg_sim": 0.7, "match_pct": 70.0, "avg_cos": 0.2, "n": 40}
    runs.write_json(rd / "clip_finetune" / "table1.json", {"threshold": 0.5, "table": {
        "pretrained": {r: row for r in ("output", "action", "reason", "control")},
        "reason_ft": {r: row for r in ("output", "action", "reason", "control")}}})
    runs.record_metrics(rd, "clip_finetune", {"targets": ["reason"], "test": {"threshold": 0.5},
                                              "models": {"reason": {"checkpoint": str(td / "checkpoints" / "k1" / "best")}}})
    paths = figures_from_run(rd)
    names = sorted(p.name for p in paths)
    assert names == ["confusion_roc_reason.png", "score_hist_reason.png", "table1.png", "training_curves_reason.png"]
    assert all(p.stat().st_size > 5000 for p in paths)


@pytest.mark.slow
def test_stage_end_to_end_on_toy_data(tmp_path):
    """prepare data -> tiny CLIP pretraining -> notebook 02's stage, small settings; then the reward loads."""
    from kit import runs
    from kit.params import load_profile
    from kit.reward import load_reward
    from kit.reward.results import results_table, table1
    from kit.stages.clip_finetune import run_clip_finetune
    from kit.stages.prepare_clip import run_prepare_clip
    from kit.stages.prepare_data import run_prepare_data

    P = load_profile("tiny", {"data.toy.splits": {"train": 60, "val": 30, "test": 30}, "pretrain.clip_epochs": 2,
                              "clip_finetune.epochs": 2, "clip_finetune.splits": {"train": 120, "val": 40, "test": 40},
                              "clip_finetune.table_samples": 10})
    rd = tmp_path / "run"
    run_prepare_data(P, rd)
    pre = run_prepare_clip(P, rd)
    assert pre["retrieval_after"]["chance"] < 0.2 and pre["epochs"] == 2
    out = run_clip_finetune(P, rd)
    m = runs.read_metrics(rd)["clip_finetune"]
    assert m["reward_checkpoint"] == out["reward_checkpoint"] and m["targets"] == ["reason", "action"]
    assert set(m["table1"]) == {"pretrained", "reason_ft", "action_ft"}
    assert len(results_table(rd)) == 8 and table1(rd).shape[0] == 4
    t1 = table1(rd)  # paper B's values beside each model's: the reason model's 94.43% on its own pairs
    assert t1.loc["Image vs. Reason", ("paper B: reason_ft", "Match %")] == 94.43
    assert list(table1(rd, paper=False).columns.get_level_values(0).unique()) == list(m["table1"])
    assert len(out["figures"]) == 7
    r = load_reward(P, rd)
    assert r.bundle.model.training is False
    again = run_clip_finetune(P, rd)  # a rerun resumes: no training
    assert again["models"]["reason"]["best_epoch"] == out["models"]["reason"]["best_epoch"]


def test_batch_augment_without_augmentation_matches_the_eval_preprocess(tiny, tmp_path):
    # the fast path (images squashed once in the store, uint8 tensors cropped and normalised per batch)
    # feeds the model what its own eval preprocessing would, when the augmentations are switched off
    from kit.reward.images import BatchAugment, ImageStore

    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (128, 192, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    store = ImageStore.for_bundle(paths, tiny)
    assert store[paths[0]].size == (tiny.image_hw[1], tiny.image_hw[0])
    got = BatchAugment(tiny, {"random_resized_crop_scale": [1.0, 1.0], "color_jitter": 0.0})(
        [store.pixels(p) for p in paths])
    want = torch.stack([tiny.preprocess(Image.open(p).convert("RGB")) for p in paths])
    assert torch.allclose(got, want, atol=1e-5)
