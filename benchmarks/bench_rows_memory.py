"""Peak memory of the training rows: frames kept on disk (the kit) vs loaded as PIL images up front.

The SFT baseline, RLOO (stage 1) and action SFT (stage 2) build TRL rows for every training scene.
Real BDD-OIA has 16k training frames: held as decoded images they take tens of GB. The kit's rows
hold frame paths, and `kit.train.rows.rows_dataset` decodes a frame when a batch is drawn.

For 1k and 8k toy scenes (one toy world with 8k training scenes, generated once in a temp folder),
each case runs in a fresh process: load the split, build each stage's rows and TRL dataset in turn
and draw one batch from it. Measured: the process's resident memory (psutil) while the split, and
then each stage's rows and dataset, are alive, the highest of those samples above what the process
held right after its imports (`peak_mb`). Not the kernel's peak RSS: the imports' own transient peak
(hundreds of MB) would hide anything smaller than it. Reported: `growth_8k_over_1k` = peak(8k) / peak(1k) per mode,
`pil_over_paths_8k`, and `kb_per_scene`, the memory one more scene costs: with paths only its row
(prompt structure and text, a few KB), with PIL also its decoded frame (72 KB of pixels at
192x128, plus what PIL and the allocator keep around them).
Writes benchmarks/results/bench_rows_memory.json. About two minutes (most of it drawing scenes).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = (1000, 8000)
MODES = ("paths", "pil")
BATCH = 8


def _child(mode: str, n: int, root: str) -> dict:
    import gc

    import psutil

    from kit.data.bdd_oia import load_split
    from kit.rl.trainer import rloo_rows
    from kit.stages.action_sft import action_rows
    from kit.stages.sft_baseline import sft_rows
    from kit.train.rows import rows_dataset

    proc = psutil.Process()

    def rss_mb() -> float:  # resident now (not the process's peak so far)
        return proc.memory_info().rss / 2**20

    gc.collect()
    base = high = rss_mb()
    t0 = time.perf_counter()
    samples = load_split(Path(root), "train", max_samples=n).samples
    if mode == "pil":  # the old way: every frame decoded into the rows before training starts
        for s in samples:
            s.frame_paths = s.load_images()
    high = max(high, rss_mb())
    P = {"rloo": {"frames": 1}}
    builders = [lambda: sft_rows(samples), lambda: rloo_rows(samples, int(P["rloo"]["frames"])),
                lambda: action_rows(samples, {s.id: "a red light ahead" for s in samples}, P)]
    drawn = 0
    for build in builders:  # one stage at a time, as a run builds them
        rows = build()
        ds = rows_dataset(rows, "bench rows")
        drawn += sum(len(ds[i]["images"]) for i in range(BATCH))
        high = max(high, rss_mb())  # the split, this stage's rows and its dataset, all alive
        del rows, ds
        gc.collect()
    return {"mode": mode, "n": len(samples), "peak_mb": round(high - base, 1), "frames_drawn": drawn,
            "seconds": round(time.perf_counter() - t0, 2)}


def main() -> dict:
    from kit.data.toyworld import generate_bdd_oia

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "bdd_oia"
        t0 = time.perf_counter()
        generate_bdd_oia(root, {"splits": {"train": max(SIZES)}}, progress=False)
        gen_s = time.perf_counter() - t0
        cases = []
        for n in SIZES:
            for mode in MODES:
                out = subprocess.run([sys.executable, "-m", "benchmarks.bench_rows_memory", "--child", mode, str(n),
                                      str(root)], cwd=HERE.parent, capture_output=True, text=True, check=True)
                cases.append(json.loads(out.stdout.strip().splitlines()[-1]))
    peak = {(c["mode"], c["n"]): c["peak_mb"] for c in cases}
    lo, hi = SIZES
    result = {
        "cases": cases,
        "growth_8k_over_1k": {m: round(peak[(m, hi)] / max(peak[(m, lo)], 1e-9), 2) for m in MODES},
        "pil_over_paths_8k": round(peak[("pil", hi)] / max(peak[("paths", hi)], 1e-9), 2),
        # what one more scene costs: the rows' text and structure (paths), or that plus its decoded frame (pil)
        "kb_per_scene": {m: round((peak[(m, hi)] - peak[(m, lo)]) * 1024 / (hi - lo), 1) for m in MODES},
        "toy_world_seconds": round(gen_s, 1),
        "note": "peak_mb: the highest resident memory sampled while the split and each stage's rows and TRL "
                "dataset (SFT baseline, RLOO, stage 2; one batch drawn from each) were alive, above the "
                "resident memory right after the imports",
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_rows_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        print(json.dumps(main(), indent=2))
