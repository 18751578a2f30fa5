"""One RLOO training step through the kit (KitRLOOTrainer: baseline switch, reward/best-of-k records,
sample log) vs a bare TRL RLOOTrainer, same tiny model, data and CLIP reward, in one process.

Writes benchmarks/results/rloo_step.json: median (and min) step seconds of each, the ratio kit/bare
(target: <= 1.05) and the time split (generation, reward, backward, other) of each. Not a timed test.
Needs no run directory: the tiny VLM (with its tokenizer) and the tiny CLIP are built, untrained, in a
temporary folder. Run it on a quiet machine; step times on a shared CPU swing widely.
"""
from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = 4        # measured steps per trainer (after WARMUP)
WARMUP = 1
ROUNDS = 2       # kit and bare alternate, ROUNDS times each, to spread machine noise over both
THREADS = 1      # one intra-op thread: on a shared 2-core machine, 2 threads make step times swing 1.7-14 s


def _rows(n: int):
    from kit.data.render import render_scene
    from kit.data.scenes import sample_scene
    from kit.labels import DESCRIBE_PROMPT
    from kit.train.rows import vlm_row

    rows = []
    for i in range(n):
        img, _ = render_scene(sample_scene(0, "train", i), 256, 144)
        row = vlm_row([img], DESCRIBE_PROMPT)
        row["id"] = f"b{i}"
        rows.append(row)
    return rows


class _Timers:
    """Wraps a trainer's generation, reward and backward calls with wall-clock timers (measurement only)."""

    def __init__(self, trainer):
        self.t = {"generation": 0.0, "reward": 0.0, "backward": 0.0}
        for attr, key, obj in (("_generate", "generation", trainer), ("_calculate_rewards", "reward", trainer),
                               ("backward", "backward", trainer.accelerator)):
            setattr(obj, attr, self._wrap(getattr(obj, attr), key))

    def _wrap(self, fn, key):
        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.t[key] += time.perf_counter() - t0
        return timed


def _run(trainer_cls, model, proc, reward, rows, P, out_dir: Path, **extra) -> dict:
    from transformers import TrainerCallback

    from kit.rl.trainer import rloo_config
    from kit.stages.rloo import trainer_settings

    args = rloo_config(*trainer_settings(P), out_dir, max_steps=WARMUP + STEPS, save_strategy="no", logging_steps=1000,
                       disable_tqdm=True)
    from datasets import Dataset

    trainer = trainer_cls(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=proc, **extra)
    timers = _Timers(trainer)
    steps, splits = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            reward.clear_cache()  # the same reward object serves both trainers: no warm cache for either
            self.t0 = time.perf_counter()
            self.s0 = dict(timers.t)

        def on_step_end(self, *a, **kw):
            steps.append(time.perf_counter() - self.t0)
            splits.append({k: timers.t[k] - self.s0[k] for k in timers.t})

    trainer.add_callback(Clock())
    trainer.train()
    steps, splits = steps[WARMUP:], splits[WARMUP:]
    for st, sp in zip(steps, splits):  # what the three timers do not cover: old log-probs, tokenizing, optimizer
        sp["other"] = st - sum(sp.values())
    return {"step_seconds": steps, "split": {k: statistics.median(s[k] for s in splits) for k in splits[0]}}


def main() -> dict:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import RLOOTrainer

    from kit.data.toyworld import text_corpus  # noqa: F401  (the tokenizer below trains on toy-world text)
    from kit.models.clip import build_tiny_clip
    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.params import load_profile
    from kit.reward.clip_reward import CLIPReward
    from kit.rl.trainer import KitRLOOTrainer

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    P = load_profile("tiny")
    R = P["rloo"]
    n_rows = int(R["batch_size"]) * (WARMUP + STEPS)
    rows = _rows(n_rows)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        from kit.data.scene_text import caption
        from kit.data.scenes import sample_scene

        texts = [caption(sample_scene(0, "train", i)) for i in range(300)]
        vdir = build_tiny_vlm(tmp / "vlm", texts)
        base = AutoModelForImageTextToText.from_pretrained(vdir)
        proc = AutoProcessor.from_pretrained(vdir)
        reward = CLIPReward(build_tiny_clip(seed=0))
        results = {"kit": [], "bare": []}
        splits = {"kit": [], "bare": []}
        for r in range(ROUNDS):
            for name in ("kit", "bare") if r % 2 == 0 else ("bare", "kit"):
                torch.manual_seed(0)
                if name == "kit":
                    out = _run(KitRLOOTrainer, copy.deepcopy(base), proc, reward, rows, P, tmp / f"kit{r}",
                               baseline="rloo", log_dir=tmp / f"kitlog{r}")
                else:
                    out = _run(RLOOTrainer, copy.deepcopy(base), proc, reward, rows, P, tmp / f"bare{r}")
                results[name] += out["step_seconds"]
                splits[name].append(out["split"])
    kit_s, bare_s = statistics.median(results["kit"]), statistics.median(results["bare"])
    res = {
        "what": "one RLOO optimizer step, tiny VLM + tiny CLIP reward, tiny profile's rloo settings",
        "settings": {"k": R["k"], "prompts_per_step": R["batch_size"], "max_new_tokens": R["max_new_tokens"],
                     "beta": R["beta"], "steps_measured_each": STEPS * ROUNDS, "threads": torch.get_num_threads()},
        "kit_step_seconds_median": kit_s,
        "bare_trl_step_seconds_median": bare_s,
        "ratio_kit_over_bare": kit_s / bare_s,
        "kit_step_seconds_min": min(results["kit"]),
        "bare_trl_step_seconds_min": min(results["bare"]),
        "ratio_kit_over_bare_min": min(results["kit"]) / min(results["bare"]),
        "overhead_target_ratio": 1.05,
        "within_target": kit_s / bare_s <= 1.05,
        "time_split_seconds_median": {n: {k: statistics.median(s[k] for s in splits[n]) for k in splits[n][0]}
                                      for n in splits},
        "step_seconds": results,
    }
    out = HERE / "results" / "rloo_step.json"
    from kit.runs import write_json

    write_json(out, res)  # atomic; creates results/
    return res


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
