"""Notebook 00, VLM part: build the tiny Idefics3 VLM and caption-pretrain it on the toy world.

The tiny profile has no downloadable weights, so notebook 00 makes a "pretrained" base model:
a tokenizer trained on the toy world's text, a random tiny Idefics3, then a short caption
pretraining (generic scene descriptions that never state the driving action, asked with
kit.labels.DESCRIBE_PROMPT) through the same kit.train.sft.train_sft every later stage uses.
Later stages load it with kit.models.vlm.load_vlm (run_dir/prepare/models/vlm).

Real profiles (models.vlm.name is a hub id or path) or pretrain.enabled: false skip pretraining;
the real model is only checked for being reachable.

Writes run_dir/prepare/models/vlm/ (model + processor), run_dir/prepare/vlm_pretrain/ (trainer
checkpoints, train_result.json, captions.jsonl, figures/*.png) and
metrics.json["prepare"]["models"]["vlm"].
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Mapping, Sequence

from kit import dist, runs
from kit.data import DataError, bdd_oia_root, load_bdd_split, toyworld
from kit.eval.generate import generate
from kit.keys import mark, processes
from kit.labels import DESCRIBE_PROMPT
from kit.models.device import model_spec
from kit.models.realsize import NAME as REALSIZE_SHAPES
from kit.models.realsize import build_realsize_vlm, meta_model
from kit.models.tiny_vlm import build_tiny_vlm
from kit.models.vlm import BUILT, REALSIZE, TINY, load_vlm, resolve_vlm_path, tiny_vlm_dir
from kit.params import params_hash
from kit.train.rows import rows_dataset, vlm_row
from kit.train.sft import plot_loss, train_sft

STAGE = "prepare"
SUB = "vlm_pretrain"


def _pretrain_params(P: Mapping) -> dict:
    """The parameters the tiny VLM depends on (a change rebuilds it)."""
    pt = P.get("pretrain") or {}
    return {"vlm": {k: v for k, v in (P["models"]["vlm"]).items() if k in ("name", "image_size", "tiny")},
            "pretrain": {k: v for k, v in pt.items() if k.startswith("vlm_") or k == "enabled"},
            "data": P.get("data"), "seed": P.get("seed"), **processes()}


def caption_rows(samples: Sequence, captions: Mapping[str, str], prompt: str = DESCRIBE_PROMPT) -> list[dict]:
    """vlm_row per sample with a toy caption: frame paths + DESCRIBE_PROMPT -> caption."""
    rows = []
    for s in samples:
        if s.file_name not in captions:
            raise DataError(f"toy/scenes_*.jsonl: no caption for {s.file_name}; expected one per BDD-OIA image")
        rows.append(vlm_row(s.frame_paths, prompt, captions[s.file_name]))
    return rows


def caption_loss(model, processor, rows: Sequence[Mapping], batch_size: int = 16) -> float:
    """Mean completion-token cross-entropy on `rows`, collated exactly as TRL's SFTTrainer does."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    ds = rows_dataset(rows, "caption_loss rows")  # frames decoded per batch, as the trainer's dataset does
    collate = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    tot, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds), batch_size):
            batch = collate([ds[j] for j in range(i, min(i + batch_size, len(ds)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            ntok = int((batch["labels"][:, 1:] != -100).sum())
            out = model(**batch)
            tot += float(out.loss) * ntok
            n += ntok
    if was_training:
        model.train()
    return tot / max(n, 1)


def _word_recall(ref: str, hyp: str) -> float:
    """Share of the reference caption's content words that the generated caption contains
    (a rough "does it name what is in the scene" measure, for the report)."""
    stop = {"a", "an", "the", "is", "on", "in", "of", "with", "at", "to", "and", "same", "road", "lane", "lanes",
            "there", "from", "seat", "view", "driver's", "above", "shows", "side", "ahead"}
    words = lambda t: {w.strip(".,;:").lower() for w in t.split()} - stop - {""}
    r = words(ref)
    return len(r & words(hyp)) / max(len(r), 1)


def run_prepare_vlm(P: dict, run_dir) -> dict:
    rd = runs.resolve_run_dir(run_dir)
    t0 = time.time()
    vp = P["models"]["vlm"]
    pt = P.get("pretrain") or {}
    if vp["name"] not in BUILT:
        where = resolve_vlm_path(model_spec(P), rd)  # fails early, with the download command, if it is not here
        res = {"name": vp["name"], "path": where, "tiny": False, "pretrained": False,
               "note": "real model: used as downloaded, no pretraining"}
        runs.record_metrics(rd, STAGE, {"models": {"vlm": res}})
        return res

    h = params_hash(_pretrain_params(P))
    final = tiny_vlm_dir(rd)
    prev = (runs.read_metrics(rd).get(STAGE) or {}).get("models", {}).get("vlm") or {}
    if prev.get("params_hash") == h and (final / "config.json").is_file():
        return {**prev, "skipped": True}
    if vp["name"] == REALSIZE:
        return _build_realsize(P, rd, final, h, t0)

    work = runs.stage_dir(rd, STAGE) / SUB
    root = bdd_oia_root(P["data"], rd)
    init_dir = work / "init"

    def build():  # the main process builds; under several processes the others wait and load it
        if prev.get("params_hash") not in (None, h):  # settings changed: start over
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        if not (init_dir / "config.json").is_file():
            build_tiny_vlm(init_dir, _text_corpus(P, rd), image_size=int(vp["image_size"]),
                           cfg=vp.get("tiny"), seed=int(P["seed"]))

    dist.on_main(build)
    t_build = time.time() - t0

    res = {"name": TINY, "path": str(final), "tiny": True, "params_hash": h,
           "image_size": int(vp["image_size"]), "pretrained": bool(pt.get("enabled", True)),
           "processes": dist.num_processes()}
    from transformers import AutoModelForImageTextToText

    n_params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(init_dir).parameters())
    res["n_params"] = n_params
    if not pt.get("enabled", True):
        dist.on_main(shutil.copytree, init_dir, final, dirs_exist_ok=True)
        mark(final, h, stage="prepare_vlm")
        res["seconds"] = round(time.time() - t0, 2)
        runs.record_metrics(rd, STAGE, {"models": {"vlm": res}})
        return res

    train = load_bdd_split(P["data"], rd, "train")
    val = load_bdd_split(P["data"], rd, "val")
    rows = caption_rows(train.samples, toyworld.load_captions(root, "train"))
    val_rows = caption_rows(val.samples, toyworld.load_captions(root, "val"))

    # the build's model path is used as the "base": pretraining is a full fine-tune of it
    spec = model_spec({**P, "models": {**P["models"], "lora": {**P["models"]["lora"], "enabled": False},
                                       "quantization": None}})
    model, processor = load_vlm(spec, rd, init_dir, for_training=True)
    before = caption_loss(model, processor, val_rows)
    cfg = {"epochs": pt["vlm_epochs"], "lr": pt["vlm_lr"], "batch_size": pt["vlm_batch_size"],
           "grad_accum": 1, "weight_decay": 0.0, "warmup_ratio": float(pt.get("vlm_warmup_ratio", 0.05)),
           "lr_scheduler": "cosine", "save_each_epoch": True, "seed": int(P["seed"]),
           "logging_steps": max(1, len(rows) // int(pt["vlm_batch_size"]) // 5)}
    tr = train_sft(model, processor, rows, work / "trainer", cfg, spec.trainer_precision())
    del model
    model, processor = load_vlm(spec, rd, tr["checkpoint"])
    after = caption_loss(model, processor, val_rows)

    # a few captions on held-out scenes

    n_show = int(pt.get("vlm_show", 6))
    shown = val.samples[:n_show]
    outs = generate(model, processor, [(s.load_images(), DESCRIBE_PROMPT) for s in shown],
                    batch_size=n_show, max_new_tokens=int(pt.get("vlm_caption_tokens", 64)),
                    desc="captions (held-out)")
    val_caps = toyworld.load_captions(root, "val")
    caps = [{"id": s.id, "image_path": str(s.image_path), "reference": val_caps[s.file_name], "generated": o,
             "word_recall": round(_word_recall(val_caps[s.file_name], o), 3)} for s, o in zip(shown, outs)]
    runs.write_jsonl(work / "captions.jsonl", caps)

    # publish the pretrained model where load_vlm looks for `tiny` (atomic: copy, then rename)
    def publish():
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(tr["checkpoint"], tmp)
        mark(tmp, h, stage="prepare_vlm")  # later stages' keys take this as the model's identity
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    dist.on_main(publish)

    res.update({
        "caption_loss_before": round(before, 4), "caption_loss_after": round(after, 4),
        "caption_word_recall": round(sum(c["word_recall"] for c in caps) / max(len(caps), 1), 3),
        "train_loss": tr["train_loss"], "eval_loss": tr["eval_loss"], "train_seconds": tr["seconds"],
        "steps": tr["steps"], "n_train": len(rows), "n_val": len(val_rows),
        "build_seconds": round(t_build, 2), "captions": str(work / "captions.jsonl"),
    })
    res["seconds"] = round(time.time() - t0, 2)
    runs.record_metrics(rd, STAGE, {"models": {"vlm": res}})
    res["figures"] = [str(f) for f in dist.on_main(figures_from_run, rd)]
    runs.record_metrics(rd, STAGE, {"models": {"vlm": {"figures": res["figures"]}}})
    return res


def _text_corpus(P: Mapping, rd: Path) -> list[str]:
    """The toy world's texts the built VLM's tokenizer is trained on (both datasets' where both are there)."""
    root = bdd_oia_root(P["data"], rd)
    return toyworld.text_corpus(root.parent if (root.parent / "coda_lm").exists() else root)


def _build_realsize(P: Mapping, rd: Path, final: Path, h: str, t0: float) -> dict:
    """`realsize`: SmolVLM-256M-Instruct's architecture, tokenizer layout, chat template and image processor
    with random weights (kit.models.realsize), published where later stages load the run's VLM; no
    pretraining (its outputs are random text: the realsize profile measures shapes, time and memory)."""
    def build():
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        build_realsize_vlm(tmp, _text_corpus(P, rd), seed=int(P["seed"]))
        mark(tmp, h, stage="prepare_vlm")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    dist.on_main(build)
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(final)
    res = {"name": REALSIZE, "path": str(final), "tiny": False, "realsize": True, "params_hash": h,
           "shapes_of": REALSIZE_SHAPES, "pretrained": False,
           "n_params": sum(p.numel() for p in meta_model().parameters()),
           "image_size": int(P["models"]["vlm"]["image_size"]),
           "text_layers": cfg.text_config.num_hidden_layers, "vocab_size": cfg.text_config.vocab_size,
           "seconds": round(time.time() - t0, 2), "processes": dist.num_processes(),
           "note": "random weights in the real model's shapes: its answers are random text"}
    runs.record_metrics(rd, STAGE, {"models": {"vlm": res}})
    return res


def figures_from_run(run_dir) -> list[Path]:
    """Rebuild the VLM pretraining figures from metrics.json and captions.jsonl alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rd = runs.resolve_run_dir(run_dir)
    m = ((runs.read_metrics(rd).get(STAGE) or {}).get("models") or {}).get("vlm") or {}
    if not m.get("train_loss"):
        return []
    fd = runs.figures_dir(rd, STAGE)
    out = []
    val_curve = [{"step": 0, "loss": m["caption_loss_before"]}] + \
        [{"step": p["step"], "loss": p["loss"]} for p in m.get("eval_loss") or []] + \
        [{"step": m.get("steps", m["train_loss"][-1]["step"]), "loss": m["caption_loss_after"]}]
    out.append(plot_loss({"train (captions)": m["train_loss"]}, points={"held-out val (before / after)": val_curve},
                         path=fd / "vlm_pretrain_loss.png",
                         title=f"tiny VLM caption pretraining: val loss {m['caption_loss_before']:.2f} -> "
                         f"{m['caption_loss_after']:.2f}"))
    caps_path = Path(m.get("captions", rd / STAGE / SUB / "captions.jsonl"))
    if caps_path.exists():
        caps = runs.read_jsonl(caps_path)
        n = len(caps)
        if n:
            import textwrap

            fig, axes = plt.subplots(n, 2, figsize=(11, 2.1 * n), gridspec_kw={"width_ratios": [1, 2.4]})
            axes = axes.reshape(n, 2)
            for (ax_i, ax_t), c in zip(axes, caps):
                ax_i.imshow(Image.open(c["image_path"]).convert("RGB"))
                ax_i.axis("off")
                ax_t.axis("off")
                txt = (f"reference: {textwrap.fill(c['reference'], 95)}\n\n"
                       f"generated: {textwrap.fill(c['generated'] or '(empty)', 95)}")
                ax_t.text(0, 0.5, txt, va="center", fontsize=7.5, family="monospace")
            fig.suptitle("tiny VLM captions on held-out scenes (after pretraining)", fontsize=10)
            fig.tight_layout()
            p = fd / "vlm_pretrain_captions.png"
            tmp = p.with_name(".vlm_pretrain_captions.tmp.png")
            fig.savefig(tmp, dpi=110)
            plt.close(fig)
            tmp.replace(p)
            out.append(p)
    return out
