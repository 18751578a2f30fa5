"""Two processes on a CPU (gloo) under `accelerate launch --multi_gpu` (torchrun): kit.dist's blocks and gathering, and
generate_records answering each item exactly once, in order, with its file written once."""
import json

import pytest

pytestmark = pytest.mark.slow


def _launch(launch, tmp_path, script: str, *args: str) -> None:
    f = tmp_path / "script.py"
    f.write_text(script)
    launch(f, *args, cwd=tmp_path)


SHARES = r'''
import json, sys
from kit import dist
out = {}
for n in (0, 1, 5, 8):
    share = list(dist.my_share(n))
    out[n] = {"share": share, "gathered": dist.gather_in_order([f"item{i}" for i in share])}
json.dump({"rank": dist.state().process_index, "n_proc": dist.num_processes(), "out": out},
          open(f"{sys.argv[1]}/rank{dist.state().process_index}.json", "w"))
dist.close()
'''


def test_blocks_cover_every_item_once_and_gather_in_order(tmp_path, accelerate_launch):
    _launch(accelerate_launch, tmp_path, SHARES, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["n_proc"] for r in ranks] == [2, 2]
    for n in ("0", "1", "5", "8"):
        shares = [r["out"][n]["share"] for r in ranks]
        assert shares[0] + shares[1] == list(range(int(n)))           # contiguous blocks in rank order
        assert abs(len(shares[0]) - len(shares[1])) <= 1
        for r in ranks:                                                # every process gets the whole list
            assert r["out"][n]["gathered"] == [f"item{i}" for i in range(int(n))]


GENERATE = r'''
import sys
from pathlib import Path
from PIL import Image
from kit import dist
from kit.eval.generate import generate_records
from kit.models.device import model_spec
from kit.models.vlm import load_vlm
from kit.params import load_profile

tmp, vlm = Path(sys.argv[1]), sys.argv[2]
P = load_profile("tiny", {})
model, processor = load_vlm(model_spec(P), tmp, vlm)

class S:
    def __init__(self, i):
        self.id, self.path = f"s{i}", tmp / f"img{i % 3}.jpg"

samples = [S(i) for i in range(11)]
recs = generate_records(model, processor, samples, tmp / "out" / "answers.jsonl", {"key": "k"},
                        items=lambda part: [([Image.open(s.path).convert("RGB")], "Describe the driving scene.") for s in part],
                        records=lambda part, _, outs: [{"id": s.id, "answer": o, "rank": dist.state().process_index}
                                                       for s, o in zip(part, outs)],
                        batch_size=2, max_new_tokens=4, desc="test")
assert [r["id"] for r in recs] == [s.id for s in samples], "every process returns every record, in order"
dist.close()
'''


def test_generation_is_sharded_and_written_once(tmp_path, accelerate_launch):
    from PIL import Image

    from kit.models.tiny_vlm import build_tiny_vlm

    for i in range(3):
        Image.new("RGB", (96, 64), (60 * i, 100, 200 - 50 * i)).save(tmp_path / f"img{i}.jpg")
    vlm = build_tiny_vlm(tmp_path / "vlm", ["a car on the road", "a red light ahead", "Describe the driving scene."] * 20,
                         image_size=64, cfg={"vocab_size": 400, "num_layers": 1, "vision_layers": 1})
    _launch(accelerate_launch, tmp_path, GENERATE, str(tmp_path), str(vlm))
    out = tmp_path / "out"
    recs = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == [f"s{i}" for i in range(11)]
    assert [r["rank"] for r in recs] == [0] * 6 + [1] * 5          # each process answered its own block
    assert not list(out.glob("*.partial*")) and (out / "answers.meta.json").is_file()
