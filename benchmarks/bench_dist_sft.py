"""SFT steps of the tiny VLM on the CPU: one process vs two processes (DDP over gloo), side by side.

Both cases run the kit's own SFT wrapper (kit.train.sft.train_sft, TRL's SFTTrainer) on the same tiny VLM
(the tiny profile's architecture, random weights, built once in a temporary folder) and the same toy rows
(kit.train.rows.vlm_row: one 128x72 image with a coloured square, a question, a one-sentence answer).
What is held fixed: the GLOBAL batch (`GLOBAL_BATCH` rows per optimizer step: 8 per device with one
process, 4 per device with two), the number of steps (`WARMUP` untimed, then `STEPS` timed), the data,
the seed, one intra-op thread per process (OMP_NUM_THREADS=1 and torch.set_num_threads(1)), and one core
per process: the single process is pinned to core A, the two processes to cores A and B
(os.sched_setaffinity in each process, before torch is imported; A, B = the first two cores this process
may use). The two processes are started as `accelerate launch --multi_gpu --num_processes 2` (torchrun;
`--cpu --num_processes 2` starts one process in accelerate 1.16) with no GPU visible, so the Trainer's
Accelerator joins them over gloo and wraps the model in DDP.

Timing: our own wall clock, a TrainerCallback added to the SFTTrainer that train_sft builds; from the end
of the last warmup step to the end of the last step, so it covers STEPS whole steps (drawing and collating
the batch, forward, backward, gradient all-reduce, optimizer). With two processes the slower rank's time
counts. samples/s = STEPS * GLOBAL_BATCH / seconds. The Trainer's own `train_samples_per_second` (whole
train(), warmup steps included) is recorded next to it for reference, not used for the ratio.
Reported: `ratio_2proc_over_1proc` = samples/s(2 processes) / samples/s(1 process) (2.0 would be perfect
scaling). The cases alternate (`ROUNDS` times each, 1-2-2-1...) to spread machine noise over both; the
median per case is reported.

Writes benchmarks/results/bench_dist_sft.json. About two minutes on a quiet 2-core machine, most of it
start-up (four launches: ~20 s for one process, ~35 s for two; 3 min with another job on the cores). With
fewer than 2 usable cores it writes a JSON that says it was skipped and why. Run it on a quiet machine:
another job on the same cores distorts the ratio.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results" / "bench_dist_sft.json"
GLOBAL_BATCH = 8   # rows per optimizer step, both cases
WARMUP = 2         # untimed steps (first-step allocations, DDP's first all-reduce buckets)
STEPS = 30         # timed steps per run (~0.15-0.2 s each on one core; start-up costs 20-35 s per launch)
ROUNDS = 2         # runs per case, alternating 1-2-2-1
TIMEOUT = 900      # seconds per launch
PROMPT = "What color is the light?"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 40)}


def _rows(n: int) -> list:
    import random

    from PIL import Image

    from kit.train.rows import vlm_row

    rows, names = [], list(COLORS)
    for i in range(n):
        rng = random.Random(i)
        im = Image.new("RGB", (128, 72), (rng.randint(60, 120),) * 3)
        x, y = rng.randint(10, 90), rng.randint(5, 30)
        im.paste(COLORS[names[i % 2]], (x, y, x + 28, y + 28))
        rows.append(vlm_row([im], PROMPT, f"The light is {names[i % 2]}."))
    return rows


def _worker(run_dir: str, out_dir: str, spec: str) -> None:
    """One training process: pin to its core, train warmup + steps steps with train_sft, write its timing."""
    spec = json.loads(spec)
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    cores, per_device, warmup, steps = spec["cores"], spec["per_device"], spec["warmup"], spec["steps"]
    os.sched_setaffinity(0, {cores[rank]})  # before torch: its thread pools start on this core only
    import torch

    torch.set_num_threads(1)
    import trl
    from transformers import TrainerCallback

    from kit.models.device import model_spec
    from kit.models.vlm import load_vlm
    from kit.params import load_profile
    from kit.train.sft import train_sft

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            ends.append(time.perf_counter())

    base = trl.SFTTrainer
    made = []

    class TimedSFTTrainer(base):  # train_sft's trainer, plus the clock (measurement only)
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.add_callback(Clock())
            made.append(self)

    trl.SFTTrainer = TimedSFTTrainer  # train_sft imports it from trl when called
    torch.manual_seed(0)
    P = load_profile("tiny")
    model, proc = load_vlm(model_spec(P), run_dir, for_training=True)
    n_steps = warmup + steps
    cfg = {"epochs": 1, "lr": 1e-3, "batch_size": per_device, "grad_accum": 1, "weight_decay": 0.0,
           "save_each_epoch": False, "max_steps": n_steps, "logging_steps": n_steps, "seed": 0}
    t0 = time.perf_counter()
    res = train_sft(model, proc, _rows(per_device * spec["processes"] * n_steps), Path(out_dir) / "sft", cfg,
                    model_spec(P).trainer_precision())
    total = time.perf_counter() - t0
    summary = next((e for e in reversed(res["log_history"]) if "train_samples_per_second" in e), {})
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    trainer = made[-1]
    out = {
        "rank": rank, "world_size": world, "core": cores[rank], "affinity": sorted(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads(), "steps": res["steps"], "step_ends": ends,
        "timed_seconds": ends[-1] - ends[warmup - 1] if len(ends) == n_steps else None,
        "train_sft_seconds": res["seconds"], "worker_seconds": total,
        "trainer_train_samples_per_second": summary.get("train_samples_per_second"),
        "trainer_train_runtime": summary.get("train_runtime"),
        "last_loss": res["train_loss"][-1]["loss"] if res["train_loss"] else None,
        # what the Trainer actually ran: DDP over gloo with 2 processes, the bare model with 1
        "distributed_type": str(trainer.accelerator.distributed_type),
        "trainer_processes": trainer.accelerator.num_processes,
        "backend": trainer.accelerator.state.backend,
        "wrapped_model": type(trainer.model_wrapped).__name__,
    }
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(out))


def _launch(n_proc: int, run_dir: Path, out_dir: Path, cores: list[int]) -> dict:
    from kit import dist

    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
               TQDM_DISABLE="1")
    per_device = GLOBAL_BATCH // n_proc
    spec = {"processes": n_proc, "per_device": per_device, "cores": cores[:n_proc], "warmup": WARMUP, "steps": STEPS}
    script = [str(Path(__file__).resolve()), "--worker", str(run_dir), str(out_dir), json.dumps(spec)]
    if n_proc == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n_proc), "--multi_gpu",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(dist.free_port()), *script]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=TIMEOUT)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{n_proc}-process run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n"
                           f"{r.stderr[-4000:]}")
    ranks = [json.loads((out_dir / f"rank{i}.json").read_text()) for i in range(n_proc)]
    if any(x["timed_seconds"] is None or x["trainer_processes"] != n_proc or x["world_size"] != n_proc
           for x in ranks):
        raise RuntimeError(f"{n_proc}-process run: unexpected worker results {ranks}")
    seconds = max(x["timed_seconds"] for x in ranks)  # the slower rank decides
    steps = [b - a for a, b in zip(ranks[0]["step_ends"][WARMUP - 1:], ranks[0]["step_ends"][WARMUP:])]
    return {
        "processes": n_proc, "per_device_batch": per_device, "cores": [x["core"] for x in ranks],
        "affinity_seen": [x["affinity"] for x in ranks], "threads_per_process": [x["threads"] for x in ranks],
        "trainer": {k: ranks[0][k] for k in ("distributed_type", "trainer_processes", "backend", "wrapped_model")},
        "timed_seconds": round(seconds, 3), "samples_per_second": round(STEPS * GLOBAL_BATCH / seconds, 3),
        "step_seconds_median": round(statistics.median(steps), 4),
        "trainer_train_samples_per_second": ranks[0]["trainer_train_samples_per_second"],
        "trainer_train_runtime": ranks[0]["trainer_train_runtime"],
        "launch_wall_seconds": round(wall, 1), "last_loss": ranks[0]["last_loss"],
    }


def _write(result: dict) -> dict:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> dict:
    import accelerate
    import torch
    import transformers
    import trl

    cores = sorted(os.sched_getaffinity(0))
    machine = {"cpu_count": os.cpu_count(), "usable_cores": cores, "torch": torch.__version__,
               "accelerate": accelerate.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
               "python": sys.version.split()[0]}
    if len(cores) < 2:
        return _write({"skipped": True, "reason": f"needs 2 usable CPU cores (one per process); this process may use "
                                                  f"{len(cores)} ({cores})", "machine": machine})

    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.params import load_profile

    P = load_profile("tiny")
    V = P["models"]["vlm"]
    texts = [f"The light is {c}." for c in COLORS] * 20 + [PROMPT] * 5
    runs = {1: [], 2: []}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_vlm(tmp / "prepare" / "models" / "vlm", texts, image_size=int(V["image_size"]), cfg=V.get("tiny"))
        i = 0
        for r in range(ROUNDS):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                out_dir = tmp / f"out{i}"
                out_dir.mkdir()
                runs[n].append(_launch(n, tmp, out_dir, cores))
                print(f"  {n} process(es): {runs[n][-1]['samples_per_second']} samples/s", flush=True)
                i += 1
    sps = {n: statistics.median(x["samples_per_second"] for x in runs[n]) for n in runs}
    result = {
        "what": "SFT optimizer steps of the tiny VLM (kit.train.sft.train_sft / TRL SFTTrainer) on the CPU: "
                "1 process on one core vs 2 processes (DDP over gloo) on two cores, same global batch",
        "skipped": False,
        "settings": {"global_batch": GLOBAL_BATCH, "per_device_batch": {"1": GLOBAL_BATCH, "2": GLOBAL_BATCH // 2},
                     "warmup_steps": WARMUP, "timed_steps": STEPS, "rounds_per_case": ROUNDS, "grad_accum": 1,
                     "threads_per_process": 1, "image_size": V["image_size"], "vlm_tiny": V.get("tiny"),
                     "cores": {"1": cores[:1], "2": cores[:2]},
                     "timing": "own wall clock (TrainerCallback.on_step_end), end of warmup to end of last step; "
                               "2 processes: the slower rank"},
        "samples_per_second": {"1": round(sps[1], 3), "2": round(sps[2], 3)},
        "seconds_median": {str(n): statistics.median(x["timed_seconds"] for x in runs[n]) for n in runs},
        "ratio_2proc_over_1proc": round(sps[2] / sps[1], 3),
        "ideal_ratio": 2.0,
        "runs": {str(n): runs[n] for n in runs},
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        "total_seconds": round(time.perf_counter() - t_all, 1),
    }
    return _write(result)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], sys.argv[4])
        from kit import dist

        dist.close()
    else:
        print(json.dumps(main(), indent=2))
