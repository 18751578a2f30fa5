import json
import multiprocessing as mp

from kit import runs


def _writer(args):
    rd, i = args
    runs.record_metrics(rd, f"stage{i}", {"value": i, "nested": {"i": i}})


def test_metrics_merge_is_atomic_and_concurrent(tmp_path):
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(str(tmp_path), i) for i in range(16)])
    m = runs.read_metrics(tmp_path)
    assert sorted(m) == sorted(f"stage{i}" for i in range(16))
    runs.record_metrics(tmp_path, "stage0", {"extra": 1})
    assert runs.read_metrics(tmp_path)["stage0"] == {"value": 0, "nested": {"i": 0}, "extra": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_jsonl_roundtrip_and_bad_line(tmp_path):
    p = runs.write_jsonl(tmp_path / "x.jsonl", [{"a": 1}, {"b": [1, 2]}])
    assert runs.read_jsonl(p) == [{"a": 1}, {"b": [1, 2]}]
    p.write_text('{"a": 1}\n{oops\n')
    try:
        runs.read_jsonl(p)
    except ValueError as e:
        assert "x.jsonl:2" in str(e)
    else:
        raise AssertionError("a malformed line must fail")


def test_require_metrics_says_which_notebook(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"prepare": {}}))
    try:
        runs.require_metrics(tmp_path, "clip_finetune", "the RLOO stage")
    except FileNotFoundError as e:
        assert "notebook 02" in str(e)
    else:
        raise AssertionError


def test_written_files_honour_the_umask(tmp_path):
    """A run folder can be shared with a group: the atomic writers give new files the mode open() would
    (mkstemp alone makes them 0600)."""
    import os
    import stat

    from PIL import Image

    from kit.data.toyworld import _save_jpeg

    old = os.umask(0o002)
    try:
        runs.write_json(tmp_path / "m.json", {"a": 1})
        runs.write_jsonl(tmp_path / "p.jsonl", [{"a": 1}])
        _save_jpeg(Image.new("RGB", (4, 4)), tmp_path / "img.jpg", 90)
    finally:
        os.umask(old)
    for name in ("m.json", "p.jsonl", "img.jpg"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o664, name


def test_paths_inside_a_run_folder_are_stored_portably(tmp_path):
    """A run folder can be moved: its JSON files hold `<run>/...` for paths inside it, read back under the
    folder the file is in now; a path outside it stays as it is."""
    import shutil

    rd = runs.ensure_run_dir(tmp_path / "a" / "run")
    ckpt = rd / "sft_baseline" / "checkpoints" / "k1" / "final"
    runs.record_metrics(rd, "sft_baseline", {"checkpoint": str(ckpt), "data": "/data/BDD-OIA", "n": 3})
    runs.write_jsonl(rd / "sft_baseline" / "predictions.jsonl", [{"id": "x", "image_paths": [str(rd / "img.jpg")]}])
    assert json.loads((rd / "metrics.json").read_text())["sft_baseline"]["checkpoint"] == \
        "<run>/sft_baseline/checkpoints/k1/final"
    assert "<run>/img.jpg" in (rd / "sft_baseline" / "predictions.jsonl").read_text()
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(rd, moved)
    shutil.rmtree(tmp_path / "a")
    m = runs.read_metrics(moved)["sft_baseline"]
    assert m == {"checkpoint": str(moved.resolve() / "sft_baseline" / "checkpoints" / "k1" / "final"),
                 "data": "/data/BDD-OIA", "n": 3}
    assert runs.read_jsonl(moved / "sft_baseline" / "predictions.jsonl")[0]["image_paths"] == [str(moved.resolve() / "img.jpg")]
    # a file outside any run folder is written as given
    runs.write_json(tmp_path / "plain.json", {"p": str(moved)})
    assert json.loads((tmp_path / "plain.json").read_text()) == {"p": str(moved)}
