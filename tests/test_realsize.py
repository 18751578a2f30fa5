"""The real models' shapes (params/realsize.yaml): SmolVLM-256M-Instruct's architecture, tokenizer layout,
chat template and image processor with random weights, loaded from a local folder by the loader every real
run uses, through one optimizer step of SFT (4-bit QLoRA), DPO (LoRA) and RLOO (LoRA, the random ViT-B-32
as its reward). The whole sweep of stages is `python -m benchmarks.realsize`."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def realsize(tmp_path_factory):
    from kit.models.realsize import build_realsize_vlm
    from kit.models.vlm import tiny_vlm_dir

    rd = tmp_path_factory.mktemp("realsize-run")
    texts = ["A red car waits at the traffic light on the left lane.", "The road is clear; a person crosses ahead.",
             "Action: stop. Reasons: Traffic light is not green.", "Describe the driving scene."] * 20
    build_realsize_vlm(tiny_vlm_dir(rd), texts)
    return rd


def _P(**over):
    from kit.params import load_profile

    return load_profile("realsize", over)


def _image(i: int = 0):
    from PIL import Image

    return Image.new("RGB", (192, 128), (40 + 50 * i, 120, 200 - 30 * i))  # the toy world's frame size


def test_published_shapes_and_template(realsize):
    """What a real run's masks and lengths depend on: the published ids, the end-of-utterance token in the
    completion's loss, 64 image tokens per tile, and image splitting at the published longest edge."""
    from transformers import AutoConfig, AutoProcessor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from kit.models import realsize as R
    from kit.models.vlm import tiny_vlm_dir
    from kit.train.rows import chat_prompt, vlm_row

    d = tiny_vlm_dir(realsize)
    cfg = AutoConfig.from_pretrained(d)
    assert (cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.text_config.vocab_size) == (576, 30, 49280)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.image_size, cfg.scale_factor) == (768, 512, 4)
    proc = AutoProcessor.from_pretrained(d)
    tok = proc.tokenizer
    assert len(tok) == 49280 and cfg.image_token_id == tok.convert_tokens_to_ids("<image>") == 49190
    assert tok.eos_token == "<end_of_utterance>" and tok.convert_tokens_to_ids("<end_of_utterance>") == 49279
    assert chat_prompt(proc, 1, "Describe the driving scene.").endswith("Describe the driving scene.<end_of_utterance>\nAssistant:")

    answer = "Action: stop. Reasons: Traffic light is not green."
    collate = DataCollatorForVisionLanguageModeling(proc, completion_only_loss=True)  # what SFTTrainer uses
    lengths = {}
    for longest, tiles in ((2048, 4 * 3 + 1), (512, 1)):  # published size: 4 x 3 tiles + the global view
        proc.image_processor.size = {"longest_edge": longest}
        batch = collate([vlm_row([_image()], "What should the ego car do, and why?", answer)])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        assert batch["pixel_values"].shape[1] == tiles
        assert int((ids == cfg.image_token_id).sum()) == R.image_tokens_per_tile() * tiles == 64 * tiles
        learned = tok.decode(ids[labels != -100])
        assert learned.strip().startswith(answer) and "<end_of_utterance>" in learned  # the model learns to stop
        assert "Assistant" not in learned and "What should" not in learned  # the prompt is masked
        lengths[longest] = int(batch["attention_mask"].sum())
    # 12 more tiles, each <fake_token_around_image><row_r_col_c> and its 64 image tokens, and a newline per row
    assert lengths[2048] - lengths[512] == 12 * (2 + 64) + 4 and lengths[2048] > 900


def _lora_layers(model) -> int:
    return sum(1 for n, _ in model.named_modules() if n.endswith("lora_A.default"))


def test_qlora_sft_step(realsize, tmp_path):
    from kit.models.device import model_spec
    from kit.models.vlm import load_vlm, lora_config
    from kit.train.rows import vlm_row
    from kit.train.sft import train_sft

    P = _P()
    spec = model_spec(P)
    assert spec.quantization == "4bit"
    model, proc = load_vlm(spec, realsize, for_training=True)
    import bitsandbytes as bnb

    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) > 200  # every Linear but the head
    rows = [vlm_row([_image(i)], "What should the ego car do, and why?", "Action: stop.") for i in range(2)]
    cfg = {"epochs": 1, "lr": 1e-4, "batch_size": 1, "grad_accum": 1, "weight_decay": 0.0, "max_steps": 1,
           "save_each_epoch": False, "logging_steps": 1, "seed": 0, "peft_config": lora_config(spec)}
    res = train_sft(model, proc, rows, tmp_path / "sft", cfg, spec.trainer_precision())
    assert res["steps"] == 1 and all(math.isfinite(p["loss"]) for p in res["train_loss"])
    # LoRA on the real module names (injected into the loaded model's layers): q/k/v/o of the 30 text layers,
    # q/k/v of the 12 vision layers (SigLIP's output projection is out_proj)
    assert _lora_layers(model) == 30 * 4 + 12 * 3
    saved = {p.name for p in Path(res["checkpoint"]).iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved  # the adapter, not a 1 GB model


def test_lora_dpo_step(realsize, tmp_path):
    from kit.models.device import model_spec
    from kit.models.vlm import load_vlm, lora_config
    from kit.train.dpo import train_dpo
    from kit.train.rows import preference_row

    P = _P(**{"models.quantization": None})
    spec = model_spec(P)
    model, proc = load_vlm(spec, realsize, for_training=True)
    from peft import get_peft_model

    model = get_peft_model(model, lora_config(spec))  # as the SPIN stage hands DPO its SFT adapter
    rows = [preference_row([_image(i)], "What should the ego car do?", "Stop: the light is red.",
                           "Go on, the road is clear.") for i in range(2)]
    cfg = {"epochs": 1, "lr": 1e-5, "batch_size": 1, "grad_accum": 1, "weight_decay": 0.0, "beta": 0.1,
           "max_steps": 1, "logging_steps": 1, "seed": 0}
    res = train_dpo(model, proc, rows, tmp_path / "dpo", cfg, spec.trainer_precision())
    assert res["steps"] == 1 and res["ref_digest"]
    losses = [e["loss"] for e in res["log_history"] if "loss" in e]
    assert losses and all(math.isfinite(x) for x in losses)


def test_lora_rloo_step_with_vit_b32_reward(realsize, tmp_path):
    from kit.models.clip import load_clip
    from kit.models.device import model_spec
    from kit.models.vlm import load_vlm, lora_config
    from kit.reward.clip_reward import CLIPReward
    from kit.rl.trainer import train_rloo
    from kit.stages.rloo import trainer_settings
    from kit.train.rows import vlm_row

    # LoRA on fp32 weights (4-bit QLoRA is the SFT test's): 4-bit decoding on a CPU is slow, and a test's
    # budget is small; no KL term (beta 0), so no reference forward
    P = _P(**{"rloo.k": 2, "rloo.batch_size": 1, "rloo.max_new_tokens": 3, "rloo.epochs": 1, "rloo.beta": 0.0,
              "models.quantization": None})
    spec = model_spec(P)
    bundle = load_clip(spec, realsize)
    assert bundle.image_size == 224 and sum(p.numel() for p in bundle.model.parameters()) > 150e6  # ViT-B-32
    model, proc = load_vlm(spec, realsize, for_training=True)
    row = vlm_row([_image()], "Describe the driving scene.")
    row["id"] = "s0"
    res = train_rloo(model, proc, CLIPReward(bundle), [row], tmp_path / "rloo", *trainer_settings(P),
                     peft_config=lora_config(spec))
    assert len(res["reward_log"]) == 1
    rec = res["reward_log"][0]
    assert all(math.isfinite(float(x)) for x in (rec["mean_reward"], rec["best_of_k"]))
