"""The tiny open_clip CLIP: registration, save/load round trip, the loader's errors, pretraining."""
from __future__ import annotations

import open_clip
import pytest
import torch
from PIL import Image

from kit.models import clip as kclip
from kit.models.device import model_spec

P_TINY = {"device": "cpu", "models": {"clip": {"name": "tiny", "pretrained": None}}}


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return kclip.build_tiny_clip(seed=0)


def _img(color, size=(96, 54)):
    return Image.new("RGB", size, color)


def test_tiny_is_a_registered_open_clip_model(tiny):
    assert kclip.TINY_NAME in open_clip.list_models()
    cfg = open_clip.get_model_config(kclip.TINY_NAME)
    assert cfg["embed_dim"] == 64 and cfg["vision_cfg"]["image_size"] == 128
    toks = tiny.tokenizer(["a red traffic light"])
    assert toks.shape == (1, cfg["text_cfg"]["context_length"])
    # squash resize: the whole 16:9 frame reaches the model (no centre crop cutting the sides off)
    assert tiny.preprocess_cfg["resize_mode"] == "squash"
    assert tiny.preprocess(_img((255, 0, 0), (256, 144))).shape == (3, 128, 128)


def test_save_and_load_round_trip(tiny, tmp_path):
    x = torch.stack([tiny.preprocess(_img((200, 30, 30))), tiny.preprocess(_img((30, 30, 200)))])
    with torch.no_grad():
        want_i, want_t = tiny.encode_images(x), tiny.encode_texts(["red", "blue"])
    kclip.save_clip(tiny, tmp_path / "ck", {"note": "test"})
    assert (tmp_path / "ck" / kclip.CONFIG_FILE).is_file() and (tmp_path / "ck" / kclip.WEIGHTS_FILE).is_file()
    b = kclip.load_clip(model_spec(P_TINY), tmp_path, checkpoint=tmp_path / "ck")
    with torch.no_grad():
        assert torch.allclose(b.encode_images(x), want_i, atol=1e-6)
        assert torch.allclose(b.encode_texts(["red", "blue"]), want_t, atol=1e-6)
    assert not b.model.training
    # the tiny CLIP of a run dir is found by the profile alone
    kclip.save_clip(tiny, kclip.tiny_clip_dir(tmp_path / "run"))
    assert kclip.load_clip(model_spec(P_TINY), tmp_path / "run").image_size == 128


def test_logit_bias_survives_save_and_load(tmp_path):
    b = kclip.build_tiny_clip(seed=1)
    b.model.logit_bias = torch.nn.Parameter(torch.tensor(-2.5))
    kclip.save_clip(b, tmp_path / "ck")
    b2 = kclip.load_clip(model_spec(P_TINY), tmp_path, checkpoint=tmp_path / "ck")
    assert b2.model.logit_bias is not None and float(b2.model.logit_bias.detach()) == pytest.approx(-2.5)


def test_loader_errors_say_what_was_looked_for(tmp_path):
    with pytest.raises(kclip.ClipLoadError, match="notebook 00"):
        kclip.load_clip(model_spec(P_TINY), tmp_path / "empty_run")
    with pytest.raises(kclip.ClipLoadError, match="does not exist"):
        kclip.load_clip(model_spec(P_TINY), tmp_path, checkpoint=tmp_path / "nope")
    (tmp_path / "half").mkdir()
    with pytest.raises(kclip.ClipLoadError, match=kclip.CONFIG_FILE):
        kclip.load_clip(model_spec(P_TINY), tmp_path, checkpoint=tmp_path / "half")
    bad = {"device": "cpu", "models": {"clip": {"name": "ViT-B-33", "pretrained": None}}}
    with pytest.raises(kclip.ClipLoadError, match="ViT-B-32"):
        kclip.load_clip(model_spec(bad), tmp_path)
    bad_tag = {"device": "cpu", "models": {"clip": {"name": "ViT-B-32", "pretrained": "no-such-tag"}}}
    with pytest.raises(kclip.ClipLoadError, match="openai"):
        kclip.load_clip(model_spec(bad_tag), tmp_path)


def test_contrastive_pretraining_learns_held_out_pairs():
    """A few epochs of ClipLoss on coloured images: loss falls, retrieval beats chance."""
    from kit.stages.prepare_clip import pretrain_clip, retrieval_accuracy

    torch.set_num_threads(1)
    colors = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}
    g = torch.Generator().manual_seed(0)

    def items(n):
        out = []
        for i in range(n):
            name = list(colors)[i % 4]
            jitter = tuple(int(c + torch.randint(-20, 20, (1,), generator=g)) for c in colors[name])
            out.append((_img(tuple(max(0, min(255, c)) for c in jitter)), f"a {name} picture"))
        return out

    b = kclip.build_tiny_clip(seed=0)
    train, held = items(64), items(16)
    before = retrieval_accuracy(b, [i for i, _ in held], [c for _, c in held])
    hist = pretrain_clip(b, train, {"clip_epochs": 6, "clip_lr": 2e-3, "clip_batch_size": 16}, seed=0)
    after = retrieval_accuracy(b, [i for i, _ in held], [c for _, c in held])
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert after["chance"] == pytest.approx(0.25)
    assert after["i2t_top1"] > after["chance"] + 0.25 and after["i2t_top1"] >= before["i2t_top1"]


def test_trimmed_text_encoding_equals_open_clip(tiny):
    """kit's encode_text drops all-padding columns; the result must equal open_clip's full-context one."""
    texts = ["Action: stop. Reason: Traffic light is not green.", "a", "Road is clear", ""]
    toks = tiny.tokenizer(texts)
    with torch.no_grad():
        full = tiny.model.encode_text(toks, normalize=True)
        trimmed = kclip.encode_text(tiny.model, toks, normalize=True)
    assert torch.allclose(full, trimmed, atol=1e-5)
    long_text = " ".join(["left lane"] * 80)  # fills the whole context: nothing to trim
    with torch.no_grad():
        t = tiny.tokenizer([long_text])
        assert torch.allclose(tiny.model.encode_text(t, normalize=True), kclip.encode_text(tiny.model, t), atol=1e-6)
