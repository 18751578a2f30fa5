"""The kit's stages on a GPU: throughput and peak GPU memory per stage, for users with a CUDA GPU.

    python -m benchmarks.gpu_stages --profile tiny --run-dir runs/gpu-bench
    python -m benchmarks.gpu_stages --profile smolvlm --set sft.epochs=1 --stages prepare_data,prepare_vlm,sft_baseline
    accelerate launch --config_file params/accelerate/multi_gpu.yaml -m benchmarks.gpu_stages --profile tiny
    python -m benchmarks.gpu_stages --dry-run          # the stages it would run; needs no GPU

Not part of `make bench` (no `bench_` prefix: benchmarks/run_all.py runs the CPU benchmarks only). Without a
CUDA GPU it stops with a message (exit status 1); `--dry-run` works anywhere. Run it from the project root
(or with the root on PYTHONPATH) so that `benchmarks` imports.

The profile is resolved as a notebook does (kit.notebook.setup) with `device=cuda` first and then the `--set`
overrides. The stages run in the stage table's order (kit.pipeline.STAGES, only the profile's tracks), or the
ones named by --stages, each as `kit stage NAME` runs it
(kit.stages.run_stage where it exists: under `accelerate launch` every process calls it). Later stages read
what earlier ones wrote in the run directory, so a subset needs a run directory where its inputs exist.

Per stage, recorded into benchmarks/results/gpu_stages.json (rewritten after each stage; by the main
process only):
- `seconds`: wall time of the stage function;
- `peak_gpu_memory_gib`: torch.cuda.max_memory_allocated of this process's GPU, its peak counter reset just
  before the stage (and `allocated_at_start_gib`: what earlier stages still held then; `peak_reserved_gib`:
  the caching allocator's peak); under several processes, one entry per process (`per_process`);
- `training`: every Trainer.train() of the stage (SFT, DPO/SPIN, RLOO; patched at transformers.Trainer):
  optimizer steps, seconds from train begin to train end (our callback), samples = steps x per-device batch x
  grad-accum x processes (the Trainer's unit: rows for SFT/DPO, completions for TRL's RLOO), and the
  Trainer's own train_samples_per_second (whole train(), as transformers reports it) next to it;
- `generation`: every outermost transformers generate() call (evaluation, RLOO's rollouts, SPIN's answers):
  sequences, new-token positions (batch x new length, padding after EOS included), seconds;
- `optimizer_steps`: every torch optimizer step in the stage (also the CLIP loops, which use no Trainer),
  and steps/s between the first and the last one (evaluation in between included);
- `samples_per_second` (training samples/s when a Trainer ran, else generated sequences/s) or, for a
  stage with neither, `steps_per_second` (optimizer steps/s); `measure` says which.

A stage that finds its results already in the run directory returns them without training or generating
(`trained_or_generated: false`; prepare_data never does either). Use a fresh --run-dir for meaningful numbers.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "gpu_stages.json"
GIB = 1024 ** 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_stages",
                                 description="run the kit's stages on a CUDA GPU; samples/s and peak GPU memory "
                                             "per stage")
    ap.add_argument("--profile", default="tiny", help="profile name in params/ or a YAML path (default: tiny)")
    ap.add_argument("--run-dir", default="runs/gpu-bench",
                    help="run directory (default: runs/gpu-bench; use a fresh one)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a profile override, e.g. sft.epochs=1 (repeatable; applied after device=cuda)")
    ap.add_argument("--stages", help="comma-separated stage names, run in this order (default: every stage of the "
                                     "profile's tracks, in the notebooks' order)")
    ap.add_argument("--out", default=str(OUT), help=f"result JSON (default: {OUT.relative_to(HERE.parent)})")
    ap.add_argument("--dry-run", action="store_true", help="list the stages it would run and exit (no GPU needed)")
    return ap


def stage_plan(P, only: str | None) -> list[str]:
    from kit import pipeline

    if only:
        names = [s.strip() for s in only.split(",") if s.strip()]
        unknown = [s for s in names if s not in {st.name for st in pipeline.STAGES}]
        if unknown:
            raise SystemExit(f"--stages: unknown {unknown}; stages: {', '.join(st.name for st in pipeline.STAGES)}")
        return names
    tracks = set(P.get("tracks") or pipeline.TRACKS)
    return [st.name for st in pipeline.STAGES if st.track is None or st.track in tracks]


class Probe:
    """Hooks that count what a stage does (measurement only): Trainer.train, generate, optimizer steps."""

    def __init__(self):
        self.reset()
        self._handles: list = []
        self._patched: list = []
        self._depth = 0

    def reset(self) -> None:
        self.training: list[dict] = []
        self.generation = {"calls": 0, "sequences": 0, "new_token_positions": 0, "decode_steps": 0, "seconds": 0.0}
        self.opt = {"steps": 0, "first": None, "last": None}

    @contextlib.contextmanager
    def installed(self):
        import torch
        import transformers
        from transformers import GenerationMixin, TrainerCallback

        probe = self

        def on_opt_step(optimizer, args, kwargs):
            now = time.perf_counter()
            probe.opt["steps"] += 1
            probe.opt["first"] = probe.opt["first"] or now
            probe.opt["last"] = now

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.rec.update(t_begin=time.perf_counter(), start_step=state.global_step)

            def on_train_end(self, args, state, control, **kw):
                self.rec.update(t_end=time.perf_counter(), end_step=state.global_step)

        orig_train = transformers.Trainer.train

        def train(trainer, *a, **kw):
            rec: dict = {"trainer": type(trainer).__name__}
            clock = Clock()
            clock.rec = rec
            trainer.add_callback(clock)
            t0 = time.perf_counter()
            try:
                out = orig_train(trainer, *a, **kw)
            finally:
                trainer.remove_callback(clock)
            args = trainer.args
            batch = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * int(args.world_size)
            steps = rec.get("end_step", trainer.state.global_step) - rec.get("start_step", 0)
            secs = rec.get("t_end", time.perf_counter()) - rec.get("t_begin", t0)
            m = dict(getattr(out, "metrics", None) or {})
            probe.training.append({
                "trainer": rec["trainer"], "steps": steps, "resumed_at_step": rec.get("start_step", 0),
                "total_batch": batch, "samples": steps * batch, "seconds": round(secs, 3),
                "samples_per_second": round(steps * batch / secs, 3) if secs > 0 and steps else None,
                "trainer_train_samples_per_second": m.get("train_samples_per_second"),
                "trainer_train_steps_per_second": m.get("train_steps_per_second"),
                "trainer_train_runtime": m.get("train_runtime"),
            })
            return out

        orig_generate = GenerationMixin.generate

        def generate(model, *a, **kw):
            probe._depth += 1
            t0 = time.perf_counter()
            try:
                out = orig_generate(model, *a, **kw)
            finally:
                probe._depth -= 1
            if probe._depth == 0:  # the outermost call only (a PEFT model's generate calls its base's)
                seqs = out.sequences if hasattr(out, "sequences") else out
                ids = kw.get("input_ids", a[0] if a and torch.is_tensor(a[0]) else None)
                if torch.is_tensor(seqs) and seqs.dim() == 2:
                    g = probe.generation
                    g["calls"] += 1
                    g["sequences"] += int(seqs.shape[0])
                    prompt_len = int(ids.shape[1]) if torch.is_tensor(ids) and ids.dim() == 2 else 0
                    g["new_token_positions"] += int(seqs.shape[0]) * max(0, int(seqs.shape[1]) - prompt_len)
                    g["decode_steps"] += max(0, int(seqs.shape[1]) - prompt_len)
                    g["seconds"] += time.perf_counter() - t0
            return out

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(on_opt_step))
        transformers.Trainer.train = train
        GenerationMixin.generate = generate
        try:
            yield self
        finally:
            transformers.Trainer.train = orig_train
            GenerationMixin.generate = orig_generate
            for h in self._handles:
                h.remove()
            self._handles.clear()

    def summary(self) -> dict:
        g, o = self.generation, self.opt
        span = (o["last"] - o["first"]) if o["steps"] > 1 else None
        return {
            "training": self.training,
            "generation": {**g, "seconds": round(g["seconds"], 3),
                           "sequences_per_second": round(g["sequences"] / g["seconds"], 3) if g["seconds"] else None,
                           "new_token_positions_per_second":
                               round(g["new_token_positions"] / g["seconds"], 1) if g["seconds"] else None},
            "optimizer_steps": {"steps": o["steps"], "span_seconds": round(span, 3) if span else None,
                                "steps_per_second": round((o["steps"] - 1) / span, 3) if span else None},
        }


def _headline(rec: dict) -> dict:
    tr = [t for t in rec["training"] if t["steps"]]
    if tr:
        samples, secs = sum(t["samples"] for t in tr), sum(t["seconds"] for t in tr)
        return {"measure": "training samples/s (Trainer)", "samples_per_second": round(samples / secs, 3)}
    if rec["generation"]["sequences"]:
        return {"measure": "generated sequences/s", "samples_per_second": rec["generation"]["sequences_per_second"]}
    if rec["optimizer_steps"]["steps_per_second"]:
        return {"measure": "optimizer steps/s", "steps_per_second": rec["optimizer_steps"]["steps_per_second"]}
    return {"measure": "wall seconds only (no training or generation)"}


def _machine(torch) -> dict:
    import accelerate
    import transformers

    try:
        import trl

        trl_v = trl.__version__
    except ImportError:
        trl_v = None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "accelerate": accelerate.__version__,
            "transformers": transformers.__version__, "trl": trl_v,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "gpu_memory_gib": [round(torch.cuda.get_device_properties(i).total_memory / GIB, 1)
                               for i in range(torch.cuda.device_count())]}


def _write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    from kit.params import load_profile

    overrides = ["device=cuda", *a.set]
    P = load_profile(a.profile, overrides)  # fails here on a bad profile or override, before any work
    plan = stage_plan(P, a.stages)
    if a.dry_run:
        print(f"profile {P['profile']} (device {P.get('device')}, tracks {P.get('tracks')}), run dir {a.run_dir}; "
              f"stages in order:")
        for s in plan:
            print(f"  {s}")
        return {"dry_run": True, "profile": P["profile"], "stages": plan, "run_dir": a.run_dir}

    import torch

    if P.get("device") not in ("cuda", "auto"):
        raise SystemExit(f"benchmarks.gpu_stages: device={P.get('device')!r}; this benchmark measures a CUDA GPU "
                         "(drop the device override)")
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu_stages: no CUDA GPU visible (torch.cuda.is_available() is False); it "
                         "measures GPU throughput and memory. `--dry-run` lists the stages; `make bench` runs the "
                         "CPU benchmarks.")

    from kit import dist, stages
    from kit.notebook import setup

    P, rd = setup(a.profile, a.run_dir, overrides)
    run_one = getattr(stages, "run_stage", None) or (lambda name, P, rd: stages.stage_function(name)(P, rd))
    n_proc = dist.num_processes()
    local = dist.state().local_process_index if n_proc > 1 else torch.cuda.current_device()
    dev = torch.device("cuda", local)
    main_proc = dist.is_main()
    was_empty = not any(rd.iterdir())
    if main_proc and not was_empty:
        print(f"benchmarks.gpu_stages: {rd} is not empty; stages that find their results there return them "
              "without training or generating (trained_or_generated: false). Use a fresh --run-dir for "
              "meaningful numbers.", file=sys.stderr)
    result = {
        "what": "the kit's stages on a CUDA GPU: throughput and peak GPU memory per stage",
        "settings": {"profile": P["profile"], "overrides": overrides, "run_dir": str(rd), "stages": plan,
                     "run_dir_was_empty": was_empty, "processes": n_proc},
        "machine": _machine(torch),
        "stages": {},
    }
    probe = Probe()
    out_path = Path(a.out)
    failed = None
    t_all = time.perf_counter()
    with probe.installed():
        for name in plan:
            probe.reset()
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            at_start = torch.cuda.memory_allocated(dev)
            if main_proc:
                print(f"== stage {name}", flush=True)
            t0 = time.perf_counter()
            err = None
            try:
                run_one(name, P, rd)
            except Exception as e:  # recorded, then stop: later stages need this one's outputs
                err = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize(dev)
            mine = {"process": dist.state().process_index if n_proc > 1 else 0, "device": str(dev),
                    "seconds": round(time.perf_counter() - t0, 2),
                    "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated(dev) / GIB, 3),
                    "peak_reserved_gib": round(torch.cuda.max_memory_reserved(dev) / GIB, 3),
                    "allocated_at_start_gib": round(at_start / GIB, 3), **probe.summary(), "error": err}
            if err is None and n_proc > 1:
                procs = dist.gather_in_order([mine])
            else:  # a failed process may be alone in failing: no collective call that could hang
                procs = [mine]
            rec = dict(procs[0])
            rec["peak_gpu_memory_gib"] = max(p["peak_gpu_memory_gib"] for p in procs)
            rec["seconds"] = max(p["seconds"] for p in procs)
            if len(procs) > 1:  # generation is split over the processes: their sequences add up
                g = {k: sum(p["generation"][k] for p in procs)
                     for k in ("calls", "sequences", "new_token_positions", "decode_steps")}
                g["seconds"] = max(p["generation"]["seconds"] for p in procs)
                g["sequences_per_second"] = round(g["sequences"] / g["seconds"], 3) if g["seconds"] else None
                g["new_token_positions_per_second"] = (round(g["new_token_positions"] / g["seconds"], 1)
                                                       if g["seconds"] else None)
                rec["generation"] = g
                rec["per_process"] = [{k: p[k] for k in ("process", "device", "seconds", "peak_gpu_memory_gib",
                                                         "peak_reserved_gib", "allocated_at_start_gib")}
                                      for p in procs]
            rec.update(_headline(rec))
            rec["trained_or_generated"] = bool(rec["training"] or rec["generation"]["calls"]
                                               or rec["optimizer_steps"]["steps"])
            result["stages"][name] = rec
            result["total_seconds"] = round(time.perf_counter() - t_all, 1)
            if main_proc:
                _write(out_path, result)
                speed = rec.get("samples_per_second", rec.get("steps_per_second"))
                print(f"   {rec['seconds']} s, peak {rec['peak_gpu_memory_gib']} GiB, {rec['measure']}: {speed}"
                      + (f"  FAILED {err}" if err else ""), flush=True)
            if err:
                failed = f"stage {name}: {err}"
                break
    result["failed"] = failed
    if main_proc:
        _write(out_path, result)
        print(f"results in {out_path}")
    if failed:
        raise SystemExit(f"benchmarks.gpu_stages: {failed} (see {out_path})")
    return result


if __name__ == "__main__":
    main()
