"""TRL rows and kit.train.sft.train_sft: completion-only loss, full / LoRA / 4-bit QLoRA steps on CPU,
resume and rerun, and that the tiny VLM can learn a label that is visible in the image."""
from __future__ import annotations

import copy
import shutil

import pytest
import torch
from PIL import Image

from kit.models.device import model_spec
from kit.params import load_profile

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40)}
TEXTS = [f"The light is {c}." for c in COLORS] * 20 + ["Describe the scene. What color is the light?"] * 5
PROMPT = "What color is the light?"


def _img(color, seed=0):
    import random

    rng = random.Random(seed)
    im = Image.new("RGB", (128, 72), (rng.randint(60, 120),) * 3)  # grey road, varying shade
    x, y = rng.randint(10, 90), rng.randint(5, 30)
    im.paste(color, (x, y, x + 28, y + 28))  # the "light": visible at 64 px
    return im


def _rows(n, seed=0):
    from kit.train.rows import vlm_row

    names = list(COLORS)
    return [vlm_row([_img(COLORS[names[i % 2]], seed + i)], PROMPT, f"The light is {names[i % 2]}.")
            for i in range(n)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from kit.models.tiny_vlm import build_tiny_vlm

    torch.set_num_threads(1)
    rd = tmp_path_factory.mktemp("run")
    build_tiny_vlm(rd / "prepare" / "models" / "vlm", TEXTS, image_size=64,
                   cfg={"vocab_size": 400, "num_layers": 2, "vision_layers": 2})
    return rd


CFG = {"epochs": 1, "lr": 1e-3, "batch_size": 4, "grad_accum": 1, "weight_decay": 0.0, "logging_steps": 1,
       "save_each_epoch": False}


def _answer(model, proc, color):
    from kit.eval.generate import generate

    return generate(model, proc, [([_img(COLORS[color], 999)], PROMPT)], batch_size=1, max_new_tokens=6,
                    progress=False)[0]


def test_vlm_row_shape():
    from kit.train.rows import vlm_row

    imgs = [_img(COLORS["red"]), _img(COLORS["green"])]
    r = vlm_row(imgs, "Describe.", "Action: stop.")
    assert r["images"] == imgs
    content = r["prompt"][0]["content"]
    assert [c["type"] for c in content] == ["image", "image", "text"] and content[-1]["text"] == "Describe."
    assert r["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "Action: stop."}]}]
    assert "completion" not in vlm_row(imgs, "Describe.", None)
    with pytest.raises(ValueError, match="at least one image"):
        vlm_row([], "Describe.", "x")


def test_collator_masks_prompt(run_dir):
    from transformers import AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    proc = AutoProcessor.from_pretrained(run_dir / "prepare" / "models" / "vlm")
    batch = DataCollatorForVisionLanguageModeling(proc, completion_only_loss=True)(
        [copy.copy(r) for r in _rows(2)])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    kept = proc.tokenizer.decode(ids[labels != -100])
    assert kept.strip() == "The light is red.<end_of_utterance>"
    assert not (labels[ids == proc.image_token_id] != -100).any()


def test_full_finetune_resume_and_rerun(run_dir, tmp_path):
    from kit.models.vlm import load_vlm
    from kit.train.sft import RESULT_FILE, train_sft

    P = load_profile("tiny")
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    out = tmp_path / "sft"
    cfg = {**CFG, "epochs": 2, "save_each_epoch": True}
    res = train_sft(model, proc, _rows(8), out, cfg, model_spec(P).trainer_precision())
    assert res["steps"] == 4 and len(res["train_loss"]) == 4
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    m2, p2 = load_vlm(model_spec(P), run_dir, res["checkpoint"])
    assert isinstance(_answer(m2, p2, "red"), str)
    # a finished run returns its result without training again
    assert train_sft(model, proc, _rows(8), out, cfg, model_spec(P).trainer_precision())["seconds"] == res["seconds"]
    # a crash after epoch 1: resume from checkpoint-2, do only the remaining steps
    shutil.rmtree(out / "final")
    shutil.rmtree(out / "checkpoint-4")
    (out / RESULT_FILE).unlink()
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    res2 = train_sft(model, proc, _rows(8), out, cfg, model_spec(P).trainer_precision())
    assert res2["resumed_from"].endswith("checkpoint-2") and res2["steps"] == 4
    assert [p["step"] for p in res2["train_loss"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("quant", [None, "4bit"])
def test_lora_and_qlora_train_then_generate(run_dir, tmp_path, quant):
    from peft import PeftModel

    from kit.models.vlm import load_vlm, lora_config
    from kit.train.sft import train_sft

    P = load_profile("tiny", {"models.lora.enabled": True, "models.lora.r": 4, "models.quantization": quant})
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    if quant:
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
        _answer(model, proc, "red")  # a no-grad generate before training: the CPU 4-bit repack bug
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    res = train_sft(model, proc, _rows(8), tmp_path / "sft", {**CFG, "peft_config": lora_config(model_spec(P))}, model_spec(P).trainer_precision())
    assert res["steps"] == 2 and all(p["loss"] > 0 for p in res["train_loss"])
    assert (tmp_path / "sft" / "final" / "adapter_config.json").is_file()
    m2, p2 = load_vlm(model_spec(P), run_dir, res["checkpoint"])
    assert isinstance(m2, PeftModel)
    lora_b = [p for n, p in m2.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # the adapter moved from its zero init
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in before and "lora" not in n
               and p.dtype.is_floating_point)  # base weights frozen
    assert isinstance(_answer(m2, p2, "green"), str)


@pytest.mark.slow
def test_tiny_vlm_learns_a_visible_label(run_dir, tmp_path):
    """The colour of a square is visible at 64 px; after SFT from random weights the model must name
    it better than always answering the majority colour (50% here). Measured: the loss sits at the
    text-only plateau (ln 2 per answer) for ~70 steps, then the vision path kicks in (20/20 at 240 steps)."""
    from kit.eval.generate import generate
    from kit.models.vlm import load_vlm
    from kit.train.sft import train_sft

    P = load_profile("tiny")
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    res = train_sft(model, proc, _rows(64), tmp_path / "sft",
                    {**CFG, "epochs": 30, "lr": 1e-3, "batch_size": 8, "lr_scheduler": "cosine",
                     "logging_steps": 8}, model_spec(P).trainer_precision())
    assert res["train_loss"][-1]["loss"] < res["train_loss"][0]["loss"]
    model, proc = load_vlm(model_spec(P), run_dir, res["checkpoint"])
    names = list(COLORS)
    tests = [(names[i % 2], _img(COLORS[names[i % 2]], 500 + i)) for i in range(20)]
    outs = generate(model, proc, [([im], PROMPT) for _, im in tests], batch_size=10, max_new_tokens=6,
                    progress=False)
    correct = sum(f"is {c}" in o for (c, _), o in zip(tests, outs))
    assert correct >= 16, f"{correct}/20 correct; outputs: {outs[:4]}"


def test_rows_with_image_paths_decode_lazily(run_dir, tmp_path):
    from kit.models.vlm import load_vlm
    from kit.train.rows import rows_dataset, vlm_row
    from kit.train.sft import train_sft

    paths = []
    for i, c in enumerate(["red", "green"] * 2):
        paths.append(tmp_path / f"{i}.png")
        _img(COLORS[c], i).save(paths[-1])
    rows = [vlm_row([p], PROMPT, "The light is red.") for p in paths]
    ds = rows_dataset(rows, "rows")
    assert isinstance(ds[0]["images"][0], Image.Image)  # decoded on access, not stored as pixels
    P = load_profile("tiny")
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    res = train_sft(model, proc, rows, tmp_path / "sft", CFG, model_spec(P).trainer_precision())
    assert res["steps"] == 1
