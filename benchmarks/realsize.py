"""Every stage at the real models' sizes on a CPU: time, tokens, memory and parameters per stage.

The `realsize` profile (params/realsize.yaml) runs the kit with SmolVLM-256M-Instruct's architecture,
tokenizer layout, chat template and image processor, and open_clip's ViT-B-32, all with random weights,
for a step or two and a few generations per stage on a handful of toy samples. This benchmark runs each
stage of it in a fresh process (so each peak is that stage's own), in two modes: 4-bit QLoRA (the
profile's setting, as smolvlm's) and LoRA on fp32 weights.

    python -m benchmarks.realsize                           # both modes, every stage (~25 min on 2 cores)
    python -m benchmarks.realsize --modes qlora --stages prepare_data,prepare_clip,prepare_vlm,sft_baseline

Per stage and mode, in benchmarks/results/realsize.json:
- `seconds`: the stage function's wall time (the process's start-up and imports not included);
- `peak_rss_mib`: the process's peak resident memory (imports, models, everything); `rss_after_setup_mib`
  what it held before the stage began;
- `training`: per Trainer.train() (SFT, DPO, RLOO): optimizer steps, `seconds_per_step`, the samples a step
  takes, trainable and total parameters (a 4-bit weight counted as the parameters it holds, not its packed
  bytes), and the memory the training itself added: `train_peak_rss_mib` (peak during train(), Linux's VmHWM
  reset at train begin) minus `rss_at_train_begin_mib`;
- `optimizer`: every torch optimizer (the CLIP loops use no Trainer): steps, trainable parameters;
- `sequences`: what the VLM was given, from every forward of a whole sequence with images (a training step,
  the prefill of a generation; mean over sequences): tokens per sequence (mean, max), image tokens, image
  tiles (Idefics3's split tiles plus the global view, 64 image tokens each);
- `generation`: sequences, decode steps, new tokens and `seconds_per_decode_step` (one step makes one
  token for every sequence of the batch).

From these, `gpu_estimate` gives each training stage's GPU memory and step time for the paper profiles
(`paper-rloo` for Track B, `paper-iterative` for Track A: their micro-batches, bf16), the method written out
beside the numbers (estimate_gpu below). They are estimates: check them with benchmarks/gpu_stages.py when a
GPU is at hand. The answers of random weights are random text, so no metric of this run means anything.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.gpu_stages import _write  # the same atomic JSON write

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "realsize.json"
MIB = 1024 ** 2
MODES = {"qlora": ["models.quantization=4bit"], "lora": ["models.quantization=null"]}


# -- the child: one stage in this process -----------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM) of this process; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _trim() -> None:
    """glibc keeps freed memory for reuse, which hides what a later step allocates; hand it back."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _params(model) -> tuple[int, int]:
    """(trainable, total) parameters; a bitsandbytes 4-bit weight counts the values it stands for."""
    train = total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        n = int(qs.shape.numel()) if qs is not None and hasattr(qs, "shape") else p.numel()
        total += n
        if p.requires_grad:
            train += n
    return train, total


class Recorder:
    """What a stage gives the VLM and what its trainers hold (measurement only)."""

    def __init__(self):
        self.trains: list[dict] = []
        self.optimizers: dict[int, dict] = {}
        self.seqs: list[tuple[int, float, int, float, float]] = []  # (n, mean tokens, max, mean image tokens, tiles)

    def install(self):
        import torch
        import transformers
        from torch.optim.optimizer import register_optimizer_step_post_hook
        from transformers import Idefics3Model

        rec = self
        orig_train = transformers.Trainer.train

        def train(trainer, *a, **kw):
            trainable, total = _params(trainer.model)
            _trim()  # freed memory back to the system first, so the peak below is what train() itself needs
            r = {"trainer": type(trainer).__name__, "trainable_params": trainable, "total_params": total,
                 "rss_at_train_begin_mib": round((_status_kib("VmRSS") or 0) / 1024, 1)}
            reset = _reset_peak()
            try:
                return orig_train(trainer, *a, **kw)
            finally:
                hwm = _status_kib("VmHWM")
                if reset and hwm:
                    r["train_peak_rss_mib"] = round(hwm / 1024, 1)
                    r["train_added_mib"] = round(r["train_peak_rss_mib"] - r["rss_at_train_begin_mib"], 1)
                rec.trains.append(r)

        # the inner model: TRL's SFT trainer calls the outer one through its fused LM head, not its forward
        orig_forward = Idefics3Model.forward

        @functools.wraps(orig_forward)  # generate() checks its keywords against forward's signature
        def forward(model, *a, **kw):
            ids = kw.get("input_ids")
            if torch.is_tensor(ids) and ids.dim() == 2 and ids.shape[1] > 1:  # a training step or a prefill
                img = (ids == model.config.image_token_id).sum(1)
                if int(img.max()) > 0:
                    mask = kw.get("attention_mask")  # generate() passes none (its cache tracks padding)
                    pad = model.config.text_config.pad_token_id
                    lens = mask.sum(1) if torch.is_tensor(mask) else (ids != pad).sum(1) if pad is not None \
                        else torch.full((ids.shape[0],), ids.shape[1])
                    v = model.config.vision_config
                    per_tile = (v.image_size // v.patch_size) ** 2 // model.config.scale_factor ** 2
                    rec.seqs.append((int(ids.shape[0]), float(lens.float().mean()), int(lens.max()),
                                     float(img.float().mean()), float(img.float().mean()) / per_tile))
            return orig_forward(model, *a, **kw)

        def on_step(optimizer, args, kwargs):
            key = id(optimizer)
            if key not in rec.optimizers:
                n = sum(p.numel() for g in optimizer.param_groups for p in g["params"] if p.requires_grad)
                rec.optimizers[key] = {"optimizer": type(optimizer).__name__, "trainable_params": n, "steps": 0}
            rec.optimizers[key]["steps"] += 1

        transformers.Trainer.train = train
        Idefics3Model.forward = forward
        register_optimizer_step_post_hook(on_step)

    def summary(self) -> dict:
        n = sum(s[0] for s in self.seqs)
        seq = None
        if n:
            seq = {"forwards": len(self.seqs), "sequences": n,
                   "mean_tokens": round(sum(s[0] * s[1] for s in self.seqs) / n, 1),
                   "max_tokens": max(s[2] for s in self.seqs),
                   "mean_image_tokens": round(sum(s[0] * s[3] for s in self.seqs) / n, 1),
                   "image_tiles": round(sum(s[0] * s[4] for s in self.seqs) / n, 2)}
            seq["mean_text_tokens"] = round(seq["mean_tokens"] - seq["mean_image_tokens"], 1)
        return {"sequences": seq, "optimizer": list(self.optimizers.values())}


def child(stage: str, run_dir: str, sets: list[str], out: str) -> None:
    from benchmarks.gpu_stages import Probe
    from kit import stages
    from kit.notebook import setup

    P, rd = setup("realsize", run_dir, sets)
    rec = Recorder()
    rec.install()
    probe = Probe()
    rss0 = (_status_kib("VmRSS") or 0) / 1024
    err = None
    with probe.installed():
        t0 = time.perf_counter()
        try:
            stages.run_stage(stage, P, rd)
        except Exception as e:  # recorded; the parent stops (later stages need this one's outputs)
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        secs = time.perf_counter() - t0
    import resource

    s = probe.summary()
    trains = []
    for t, r in zip(s["training"], rec.trains):
        steps = t["steps"]
        trains.append({**r, "steps": steps, "samples_per_step": t["total_batch"],
                       "seconds": t["seconds"], "seconds_per_step": round(t["seconds"] / steps, 2) if steps else None})
    g = s["generation"]
    gen = {k: g[k] for k in ("calls", "sequences", "decode_steps", "new_token_positions", "seconds")}
    gen["seconds_per_decode_step"] = round(g["seconds"] / g["decode_steps"], 4) if g["decode_steps"] else None
    res = {"seconds": round(secs, 2), "rss_after_setup_mib": round(rss0, 1),
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
           "training": trains, "generation": gen, **rec.summary(), "error": err}
    Path(out).write_text(json.dumps(res, indent=1))


# -- estimates for a GPU ------------------------------------------------------------------------------------------

# The assumptions, stated once (README "Real data and a GPU" repeats them):
GPU_TFLOPS = 60.0           # sustained bf16 TFLOP/s of a training step of a 0.26B model at micro-batch 4 on an
#                             H100 (about 6% of its dense peak: small matrices, LoRA and 4-bit dequantisation)
CUDA_CONTEXT_GIB = 0.6


@functools.lru_cache(maxsize=1)
def _flop_params() -> dict:
    """The VLM's parameters that do matrix work, split by what they run on: the vision encoder on every
    tile's 1024 patches, the rest (text decoder, connector, output head; not the embedding lookup) on every
    token of the sequence."""
    from kit.models.realsize import SMOLVLM_256M, meta_model

    vision = text = 0
    for name, p in meta_model().named_parameters():
        if "vision_model" in name:
            vision += p.numel()
        elif "embed_tokens" not in name:
            text += p.numel()
    v = SMOLVLM_256M["vision_config"]
    return {"vision": vision, "text": text, "patches_per_tile": (v["image_size"] // v["patch_size"]) ** 2}


def estimate_gpu(rec: dict, micro_batch: int, mode: str) -> dict | None:
    """GPU memory and seconds per micro-batch of one measured training, at `micro_batch` sequences of the
    measured lengths, in bf16. Method:
        memory  = weights (4-bit: half a byte a parameter; else 2 bytes)
                  + (memory train() added on the CPU, per sequence) x micro_batch / 2 (fp32 -> bf16)
                  + CUDA context
        seconds = 6 x (text parameters x tokens + vision parameters x patches) x micro_batch / GPU_TFLOPS
    The CPU's added memory holds the activations kept for backward (the vision encoder's 1024 patches a
    tile dominate them), the gradients and the optimizer's state of the trainable parameters, at the
    measured micro-batch; halving it for bf16 overstates what stays fp32 (LoRA's weights and AdamW's
    moments, small next to the activations), and a GPU's fused attention keeps no attention matrices,
    so the memory leans high. 6 FLOPs a parameter and token is a full fine-tune's forward and backward;
    LoRA skips the frozen weights' gradients (about 4), so the time leans high too."""
    tr = [t for t in rec.get("training") or [] if t.get("steps") and t.get("train_added_mib") is not None]
    seq = rec.get("sequences") or {}
    if not tr or not seq:
        return None
    t = tr[0]
    measured_batch = max(1, int(t["samples_per_step"]))
    weights_gib = (t["total_params"] * (0.5 if mode == "qlora" else 2)) / 1024 ** 3
    per_seq_mib = max(0.0, t["train_added_mib"]) / measured_batch
    mem = weights_gib + per_seq_mib * micro_batch / 2 / 1024 + CUDA_CONTEXT_GIB
    fp = _flop_params()
    flops = 6 * (fp["text"] * seq["mean_tokens"] + fp["vision"] * fp["patches_per_tile"] * seq["image_tiles"])
    return {"micro_batch": micro_batch, "memory_gib": round(mem, 2),
            "seconds_per_micro_batch": round(flops * micro_batch / (GPU_TFLOPS * 1e12), 3),
            "tokens_per_sequence": seq["mean_tokens"], "image_tiles": seq["image_tiles"]}


# -- the parent ------------------------------------------------------------------------------------------------

def _machine() -> dict:
    import torch

    try:
        import bitsandbytes as bnb

        bnb_v = bnb.__version__
    except ImportError:
        bnb_v = None
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bnb_v, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.realsize",
                                 description="every stage at the real models' sizes on a CPU (params/realsize.yaml): "
                                             "seconds, tokens, memory and parameters per stage")
    ap.add_argument("--modes", default="qlora,lora", help="comma-separated: qlora (4-bit weights) and/or lora "
                                                          "(fp32 weights); default both")
    ap.add_argument("--stages", help="comma-separated stage names, in order (default: every stage of both tracks)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a further profile override")
    ap.add_argument("--run-root", default=None, help="where the runs go (default: a temporary folder, removed after)")
    ap.add_argument("--out", default=str(OUT), help=f"result JSON (default: {OUT.relative_to(ROOT)})")
    ap.add_argument("--table", action="store_true", help="recompute the GPU estimates from the numbers in --out, "
                                                         "store them there, print the README's table and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    a = build_parser().parse_args(argv)
    if a.child:
        child(a.child, a.run_dir, a.set, a.child_out)
        return None
    if a.table:
        result = json.loads(Path(a.out).read_text())
        result["gpu_estimate"] = gpu_estimates(result)  # the method as it is now, on the measured numbers
        _write(Path(a.out), result)
        print(table(result))
        return None
    from benchmarks.gpu_stages import stage_plan
    from kit import quiet
    from kit.params import load_profile

    quiet.known_messages()  # as every stage process does (kit.notebook.setup)
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown {bad}; expected some of {', '.join(MODES)}")
    P = load_profile("realsize", a.set)  # a bad override fails here, before any work
    plan = stage_plan(P, a.stages)
    root = Path(a.run_root) if a.run_root else Path(tempfile.mkdtemp(prefix="kit-realsize-"))
    out = Path(a.out)
    result = {"what": "every stage at SmolVLM-256M-Instruct's and ViT-B-32's sizes (random weights) on a CPU",
              "settings": {"profile": "realsize", "overrides": a.set, "stages": plan, "modes": modes},
              "machine": _machine(), "modes": {}, "failed": None,
              "gpu_estimate_assumptions": {"gpu_tflops_sustained": GPU_TFLOPS, "cuda_context_gib": CUDA_CONTEXT_GIB,
                                           "dtype": "bf16"}}
    t_all = time.perf_counter()
    try:
        for mode in modes:
            rd = root / mode
            shutil.rmtree(rd, ignore_errors=True)
            sets = [*MODES[mode], *a.set]
            recs: dict = {}
            result["modes"][mode] = {"overrides": sets, "stages": recs}
            for name in plan:
                print(f"== {mode}: {name}", flush=True)
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    cout = f.name
                cmd = [sys.executable, "-m", "benchmarks.realsize", "--child", name, "--run-dir", str(rd),
                       "--child-out", cout, *(x for s in sets for x in ("--set", s))]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
                try:
                    rec = json.loads(Path(cout).read_text())
                except (OSError, json.JSONDecodeError):
                    tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-3:]
                    rec = {"error": f"exit status {proc.returncode}: {' | '.join(tail)}"}
                finally:
                    Path(cout).unlink(missing_ok=True)
                rec["process_seconds"] = round(time.perf_counter() - t0, 1)
                recs[name] = rec
                print(f"   {rec.get('seconds')} s, peak RSS {rec.get('peak_rss_mib')} MiB"
                      + (f"  FAILED {rec['error']}" if rec.get("error") else ""), flush=True)
                result["total_seconds"] = round(time.perf_counter() - t_all, 1)
                _write(out, result)
                if rec.get("error"):
                    result["failed"] = f"{mode}: stage {name}: {rec['error']}"
                    break
            if result["failed"]:
                break
    finally:
        if not a.run_root:
            shutil.rmtree(root, ignore_errors=True)
    result["gpu_estimate"] = gpu_estimates(result)
    _write(out, result)
    print(f"results in {out}")
    if result["failed"]:
        raise SystemExit(f"benchmarks.realsize: {result['failed']} (see {out})")
    return result


# the paper profiles' micro-batches (per-device batch_size of each stage's section)
PAPER_MICRO_BATCH = {"sft_baseline": ("paper-rloo", "sft"), "action_sft": ("paper-rloo", "action_sft"),
                     "rloo": ("paper-rloo", "rloo"), "coda_sft": ("paper-iterative", "coda_sft"),
                     "coda_sft_synth": ("paper-iterative", "coda_sft"), "spin": ("paper-iterative", "spin")}


def gpu_estimates(result: dict) -> dict:
    from kit.params import load_profile

    out: dict = {}
    for mode, m in result["modes"].items():
        for name, rec in m["stages"].items():
            if name not in PAPER_MICRO_BATCH:
                continue
            prof, section = PAPER_MICRO_BATCH[name]
            P = load_profile(prof)
            mb = int(P[section]["batch_size"]) * (int(P["rloo"]["k"]) if name == "rloo" else 1)
            est = estimate_gpu(rec, mb, mode)
            if est is not None:
                est["profile"] = f"{prof} ({section}.batch_size" + (" x rloo.k)" if name == "rloo" else ")")
                out.setdefault(mode, {})[name] = est
    return out


def _m(n: int | None) -> str:
    return "" if not n else f"{n / 1e6:.1f}M" if n < 1e9 else f"{n / 1e9:.2f}B"


def table(result: dict) -> str:
    """The README's table: per stage, the measured CPU numbers of each mode and the GPU estimate."""
    modes = list(result["modes"])
    head = ("| stage | mode | stage s | s / optimizer step (samples) | tokens / sequence (image) | s / decode step "
            "| peak RSS GiB | trainable / total params "
            "| GPU estimate: memory GiB, s / micro-batch (paper micro-batch) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    est = result.get("gpu_estimate") or {}
    names = list(dict.fromkeys(n for m in modes for n in result["modes"][m]["stages"]))
    for name in names:
        for mode in modes:
            rec = result["modes"][mode]["stages"].get(name)
            if rec is None:
                continue
            tr = [t for t in rec.get("training") or [] if t.get("steps")]
            step = "; ".join(f"{t['seconds_per_step']} ({t['samples_per_step']})" for t in tr)
            params = "; ".join(f"{_m(t['trainable_params'])} / {_m(t['total_params'])}" for t in tr[:1])
            if not tr and rec.get("optimizer"):
                o = rec["optimizer"][0]
                params = f"{_m(o['trainable_params'])} (CLIP)"
            seq = rec.get("sequences") or {}
            toks = f"{seq['mean_tokens']:.0f} ({seq['mean_image_tokens']:.0f})" if seq else ""
            dec = (rec.get("generation") or {}).get("seconds_per_decode_step") or ""
            e = est.get(mode, {}).get(name)
            g = f"{e['memory_gib']}, {e['seconds_per_micro_batch']} ({e['micro_batch']})" if e else ""
            lines.append(f"| {name} | {mode} | {rec.get('seconds', '')} | {step} | {toks} | {dec} | "
                         f"{rec.get('peak_rss_mib', 0) / 1024:.1f} | {params} | {g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
