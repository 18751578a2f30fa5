"""The CLIP fine-tune and the tiny CLIP's pretraining in two CPU processes (gloo) under `accelerate launch
--multi_gpu` (torchrun): DDP keeps the processes' weights equal, each process runs its block of every
batch and the loss is the whole batch's, so the run follows the one-process run up to float rounding;
only the main process writes the checkpoints and history.json."""
import json

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

SCRIPT = r'''
import hashlib, json, sys
from pathlib import Path

import torch
from PIL import Image

torch.set_num_threads(1)
from kit import dist
from kit.models import clip as kclip
from kit.reward import finetune as F
from kit.reward.pairs import Pair
from kit.stages.prepare_clip import pretrain_clip

TEXTS = {("red", "left"): "red on the left", ("red", "right"): "red on the right",
         ("green", "left"): "green on the left", ("green", "right"): "green on the right"}
CFG = {"epochs": 2, "batch_size": 16, "lr": 2e-3, "weight_decay": 0.01, "grad_clip": 1.0, "plateau_factor": 0.2,
       "plateau_patience": 3, "early_stop_patience": 7, "flip": "swap_text", "random_resized_crop_scale": [0.9, 1.0],
       "color_jitter": 0.1, "logit_bias": 0.0, "in_batch_negatives": True}


def digest(model):
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(img_dir, out_dir):
    out_dir = Path(out_dir)
    ps = []
    for i in range(40):
        col, side = ["red", "green"][i % 2], ["left", "right"][(i // 2) % 2]
        right, wrong = TEXTS[(col, side)], TEXTS[("green" if col == "red" else "red", side)]
        path = str(Path(img_dir) / f"c{i}.png")
        ps += [Pair(f"c{i}", path, right, 1, right), Pair(f"c{i}", path, wrong, 0, right)]
    train, val = ps[:49], ps[49:]  # batches of 16, 16, 16 and 1: the last one leaves one process without a pair
    calls = {"save_clip": 0, "torch_save": 0}  # what each process writes itself
    real = F.save_clip, F._atomic_torch_save

    def count(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    F.save_clip, F._atomic_torch_save = count("save_clip", real[0]), count("torch_save", real[1])
    try:
        b = kclip.build_tiny_clip(seed=0)
        res = F.finetune_clip(b, train, val, out_dir / "ft", CFG, seed=0, truths={p.image_path: {p.anchor} for p in ps})
    finally:
        F.save_clip, F._atomic_torch_save = real
    items = [(Image.open(p.image_path).convert("RGB"), p.anchor) for p in ps[::2][:30]]
    pre = kclip.build_tiny_clip(seed=0)
    # batches of 9 and 3: blocks 5+4 and 2+1
    hist = pretrain_clip(pre, items, {"clip_epochs": 2, "clip_lr": 2e-3, "clip_batch_size": 9}, seed=0)
    (out_dir / f"rank{dist.rank()}.json").write_text(json.dumps({
        "n_proc": dist.num_processes(), "calls": calls, "result": {k: v for k, v in res.items() if k != "seconds"},
        "ft_weights": digest(b.model), "pretrain": [h["loss"] for h in hist], "pretrain_weights": digest(pre.model)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    dist.close()
'''


def _images(folder) -> None:
    folder.mkdir()
    for i in range(40):
        img = Image.new("RGB", (64, 36), (128, 128, 128))
        x0 = 0 if ["left", "right"][(i // 2) % 2] == "left" else 32
        img.paste((220, 20, 20) if i % 2 == 0 else (20, 200, 20), (x0, 0, x0 + 32, 36))
        img.save(folder / f"c{i}.png")


def _timeless(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def _close(a, b, rel=1e-3):
    return (a is None and b is None) or a == pytest.approx(b, rel=rel, abs=1e-6)


def test_clip_training_in_two_processes_is_data_parallel_and_written_once(tmp_path, accelerate_launch):
    _images(tmp_path / "img")
    (tmp_path / "two").mkdir()
    (tmp_path / "script.py").write_text(SCRIPT)
    accelerate_launch(tmp_path / "script.py", str(tmp_path / "img"), str(tmp_path / "two"), cwd=tmp_path)
    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["n_proc"] for r in ranks] == [2, 2]
    # DDP: both processes end with the same weights, and return the same history
    assert ranks[0]["ft_weights"] == ranks[1]["ft_weights"]
    assert ranks[0]["pretrain_weights"] == ranks[1]["pretrain_weights"]
    assert _timeless(ranks[0]["result"]["history"]) == _timeless(ranks[1]["result"]["history"])
    # the main process writes the checkpoints, the other none
    assert ranks[1]["calls"] == {"save_clip": 0, "torch_save": 0}
    assert ranks[0]["calls"]["torch_save"] == 2 and ranks[0]["calls"]["save_clip"] >= 1
    ft = tmp_path / "two" / "ft"
    saved = json.loads((ft / "history.json").read_text())
    assert saved["done"] and saved["history"] == ranks[0]["result"]["history"]
    assert {p.name for p in (ft / "best").iterdir()} == {"open_clip_model.safetensors", "open_clip_config.json",
                                                         ".kit_artifact.json"}
    assert sorted(p.name for p in ft.iterdir()) == ["best", "history.json"]  # last.pt gone, no temp files left

    # the same run in this one process: the same epochs and keys, the same numbers up to float rounding
    # (every process sees the batches one process sees, and the loss is the whole batch's)
    ns = {"__name__": "one"}
    exec(compile(SCRIPT, "script.py", "exec"), ns)
    (tmp_path / "one").mkdir()
    ns["main"](str(tmp_path / "img"), str(tmp_path / "one"))
    one = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert one["n_proc"] == 1 and one["calls"] == ranks[0]["calls"]
    h1, h2 = one["result"]["history"], ranks[0]["result"]["history"]
    assert [sorted(h) for h in h1] == [sorted(h) for h in h2] and [h["epoch"] for h in h1] == [0, 1, 2]
    for a, b in zip(h1, h2):
        assert all(_close(a[k], b[k]) for k in ("train_loss", "val_loss", "lr")), (a, b)
        assert a["val_auroc"] == pytest.approx(b["val_auroc"], abs=0.02)
    assert one["result"]["best_epoch"] == ranks[0]["result"]["best_epoch"]
    assert all(_close(a, b) for a, b in zip(one["pretrain"], ranks[0]["pretrain"])), (one, ranks[0])
