"""The tiny VLM builder, the tokenizer and kit.models.vlm.load_vlm (no run directory needed)."""
from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from kit.models.device import model_spec
from kit.params import load_profile

TEXTS = [f"A {c} car is {d} ahead in the same lane. A traffic light above the road shows {l}."
         for c in ("red", "blue", "white") for d in ("near", "far") for l in ("red", "green")] * 5


def _img(color=(200, 30, 30)):
    return Image.new("RGB", (96, 54), color)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from kit.models.tiny_vlm import build_tiny_vlm

    torch.set_num_threads(1)
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny") / "vlm", TEXTS, image_size=64,
                          cfg={"vocab_size": 600, "num_layers": 2, "vision_layers": 2})


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    """A run directory whose prepare/models/vlm is the tiny model (what notebook 00 leaves)."""
    rd = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_dir, rd / "prepare" / "models" / "vlm")
    return rd


def test_tokenizer_special_tokens_and_roundtrip():
    from kit.models import tokenizer as T

    tok = T.train_tokenizer(TEXTS, vocab_size=600)
    for s in (T.IMAGE, T.EOS, T.BOS, T.FAKE_IMAGE, T.GLOBAL_IMAGE, "<row_1_col_1>"):
        ids = tok(s, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{s} should be one token, got {ids}"
    text = "A zebra (unseen word) stops: Action: stop."
    assert tok.decode(tok(text)["input_ids"]) == text  # byte-level: any text round-trips
    assert tok(TEXTS[0])["input_ids"][0] != tok.bos_token_id  # no BOS added: the chat template has it


def test_chat_template_marks_assistant_turn(tiny_dir):
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(tiny_dir)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the driving scene."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red car."}]}]
    text = proc.apply_chat_template(msgs)
    assert text.startswith("<|im_start|>User:<image>Describe")
    assert text.endswith("Assistant: A red car.<end_of_utterance>\n")
    gen = proc.apply_chat_template(msgs[:1], add_generation_prompt=True)
    assert gen.endswith("<end_of_utterance>\nAssistant:") and text.startswith(gen)
    out = proc.tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    marked = proc.tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert marked.strip() == "A red car.<end_of_utterance>"


def test_build_save_reload_generate(tiny_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from kit.train.rows import chat_prompt

    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    proc = AutoProcessor.from_pretrained(tiny_dir)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert model.config.image_token_id == proc.image_token_id
    assert model.generation_config.eos_token_id == proc.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    enc = proc(images=[[_img()], [_img((0, 200, 0)), _img()]],
               text=[chat_prompt(proc, 1, "Describe."), chat_prompt(proc, 2, "Describe.")],
               padding=True, return_tensors="pt")
    n_img_tokens = int((enc["input_ids"][1] == proc.image_token_id).sum())
    assert n_img_tokens == 2 * 16  # (64/8)^2 / 2^2 per image
    out = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] > enc["input_ids"].shape[1]


def test_load_vlm_tiny_device_dtype(run_dir):
    from kit.models.vlm import load_vlm

    model, proc = load_vlm(model_spec(load_profile("tiny")), run_dir)
    p = next(model.parameters())
    assert p.device.type == "cpu" and p.dtype == torch.float32
    assert not model.training
    assert hasattr(proc, "image_processor") and proc.image_processor.size["longest_edge"] == 64


def test_missing_model_errors_are_clear(tmp_path, monkeypatch):
    from kit.models.vlm import ModelNotFoundError, load_vlm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    P = load_profile("tiny", {"models.vlm.name": "nobody-here/no-such-vlm"})
    with pytest.raises(ModelNotFoundError) as e:
        load_vlm(model_spec(P), tmp_path)
    msg = str(e.value)
    assert "nobody-here/no-such-vlm" in msg and "hf download nobody-here/no-such-vlm" in msg and "tiny" in msg
    with pytest.raises(ModelNotFoundError, match="notebook 00"):
        load_vlm(model_spec(load_profile("tiny")), tmp_path)  # tiny, but notebook 00 never ran here
    with pytest.raises(ModelNotFoundError, match="config.json"):
        load_vlm(model_spec(load_profile("tiny")), tmp_path, tmp_path / "checkpoint-9")


def test_lora_config_follows_profile():
    from peft import LoraConfig

    from kit.models.vlm import lora_config

    assert lora_config(model_spec(load_profile("tiny"))) is None
    cfg = lora_config(model_spec(load_profile("tiny", {"models.lora.enabled": True, "models.lora.r": 4})))
    assert isinstance(cfg, LoraConfig) and cfg.r == 4 and "q_proj" in cfg.target_modules
    with pytest.raises(ValueError, match="lora.enabled"):
        lora_config(model_spec(load_profile("tiny", {"models.quantization": "4bit"})))


def test_prepare_vlm_stage_on_toy_data(tmp_path):
    """Notebook 00's VLM part on a tiny toy world: builds, caption-pretrains, records metrics and
    figures, publishes the model where load_vlm finds `tiny`, and a rerun is skipped."""
    from kit import runs
    from kit.data import toyworld
    from kit.models.vlm import load_vlm
    from kit.stages.prepare_vlm import run_prepare_vlm

    P = load_profile("tiny", {"data.toy.splits": {"train": 24, "val": 8}, "pretrain.vlm_epochs": 1,
                              "pretrain.vlm_batch_size": 8, "pretrain.vlm_show": 2,
                              "pretrain.vlm_caption_tokens": 8,
                              "models.vlm.tiny": {"vocab_size": 500, "num_layers": 2, "vision_layers": 2}})
    root = tmp_path / "prepare" / "data" / "bdd_oia"
    toyworld.generate_bdd_oia(root, P["data"]["toy"], progress=False)
    runs.record_metrics(tmp_path, "prepare", {"datasets": {"bdd_oia_root": str(root)}})
    res = run_prepare_vlm(P, tmp_path)
    m = runs.read_metrics(tmp_path)["prepare"]["models"]["vlm"]
    assert m["path"] == str(tmp_path / "prepare" / "models" / "vlm") and m["steps"] == 3
    assert m["caption_loss_after"] < m["caption_loss_before"]
    assert all((tmp_path / "prepare" / "figures" / f).is_file()
               for f in ("vlm_pretrain_loss.png", "vlm_pretrain_captions.png"))
    assert len(runs.read_jsonl(res["captions"])) == 2
    model, _ = load_vlm(model_spec(P), tmp_path)
    assert type(model).__name__ == "Idefics3ForConditionalGeneration"
    assert run_prepare_vlm(P, tmp_path).get("skipped") is True


def test_model_spec_resolves_once_and_keys_keep_the_profile_as_written():
    """model_spec(P) is all the model layer sees: device and dtype resolved, and the profile's own
    `device:`/`precision:` strings for stage keys (so a key does not change with where `auto` lands)."""
    from kit.models.vlm import vlm_settings

    P = load_profile("tiny", {"device": "auto", "precision": "auto"})
    spec = model_spec(P)
    assert spec.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert spec.dtype == (torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    s = vlm_settings(spec)
    assert (s["device"], s["precision"]) == ("auto", "auto") and s["vlm"] == P["models"]["vlm"] and s["lora"] is None
    with pytest.raises(ValueError, match="precision='fp8'"):
        model_spec({**P, "precision": "fp8"})
