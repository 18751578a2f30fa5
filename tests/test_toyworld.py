"""The toy world: labels follow the scene graph, pixels follow the graph, writers emit the real
layouts (read back by the real loaders), generation is deterministic, fast and resumable."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kit import labels as L
from kit.data import bdd_oia, coda_lm, scenes
from kit.data import toyworld as T
from kit.data.check import check_dataset
from kit.data.render import render_scene

CFG = {"seed": 3, "width": 192, "height": 128, "frames": 1, "splits": {"train": 30, "val": 24},
       "coda_splits": {"Train": 6, "Val": 4, "Test": 3, "Mini": 2}, "balance": "uniform", "corner_case_rate": 0.15}


def base_graph(**kw) -> dict:
    g = {"sky": "day", "lanes": {"left": "dashed", "right": "dashed"}, "ego_lane": "straight", "light": None,
         "sign": None, "front_car": None, "ego_obstacle": None, "left_lane_obstacle": None,
         "right_lane_obstacle": None, "corner_case": False, "motion": {}}
    g.update(kw)
    return g


def on(reasons):
    return {i for i, v in enumerate(reasons) if v}


def test_red_light_gives_stop_and_reason_3():
    a, r = scenes.labels(base_graph(light={"color": "red", "arrow": None}))
    assert a == [0, 1, 0, 0] and on(r) == {3}


def test_green_and_clear_gives_forward_0_2():
    a, r = scenes.labels(base_graph(light={"color": "green", "arrow": None}))
    assert a == [1, 0, 0, 0] and on(r) == {0, 2}


def test_near_car_stop_far_car_follow():
    car = {"distance": "near", "turning": None, "t": 0.65, "kind": "car", "color": [0, 0, 255]}
    a, r = scenes.labels(base_graph(front_car=car))
    assert a[1] == 1 and a[0] == 0 and 5 in on(r)
    a, r = scenes.labels(base_graph(front_car={**car, "distance": "far", "t": 0.27}))
    assert a == [1, 0, 0, 0] and on(r) == {1}


@pytest.mark.parametrize("kind,reason", [("pedestrian", 6), ("rider", 7), ("debris", 8), ("animal", 8),
                                         ("overturned_vehicle", 8), ("road_works", 8)])
def test_obstacles(kind, reason):
    a, r = scenes.labels(base_graph(ego_obstacle={"kind": kind, "t": 0.65}))
    assert a[1] == 1 and reason in on(r)


@pytest.mark.parametrize("side,act,off", [("left", 2, 0), ("right", 3, 6)])
def test_side_rules_and_mirrors(side, act, off):
    a, r = scenes.labels(base_graph(lanes={"left": "dashed", "right": "dashed", side: "solid"}))
    assert a[act] == 0 and on(r) == {2, 11 + off}
    a, r = scenes.labels(base_graph(lanes={"left": "dashed", "right": "dashed", side: "none"}))
    assert a[act] == 0 and 9 + off in on(r)
    a, r = scenes.labels(base_graph(**{f"{side}_lane_obstacle": {"kind": "car", "t": 0.5, "color": [1, 1, 1]}}))
    assert a[act] == 0 and 10 + off in on(r)
    a, r = scenes.labels(base_graph(ego_lane=f"{side}_turn"))
    assert a[act] == 1 and a[0] == 0 and on(r) == {12 + off}
    a, r = scenes.labels(base_graph(light={"color": "red", "arrow": side}))
    assert a[act] == 1 and a[1] == 1 and on(r) == {3, 13 + off}
    a, r = scenes.labels(base_graph(front_car={"distance": "mid", "turning": side, "t": 0.45, "kind": "car",
                                          "color": [1, 1, 1]}))
    assert a[act] == 1 and 14 + off in on(r)


def test_sampled_graphs_are_consistent():
    for bal in ("uniform", "bdd"):
        for i in range(300):
            g = scenes.sample_scene(0, "t", i, bal)
            a, r = scenes.labels(g)
            assert any(a), g
            assert a[2] == int(bool(on(r) & {12, 13, 14})) and not (a[2] and on(r) & {9, 10, 11})
            assert a[3] == int(bool(on(r) & {18, 19, 20})) and not (a[3] and on(r) & {15, 16, 17})
            assert a[0] == int(not a[1] and g["ego_lane"] == "straight")
            assert a[1] == int(bool(on(r) & set(range(3, 9))))


def test_bdd_balance_skews_toward_stop_and_light():
    def shares(bal):
        rs = [scenes.labels(scenes.sample_scene(0, "s", i, bal))[1] for i in range(400)]
        return sum(r[3] for r in rs) / 400, sum(r[13] + r[19] for r in rs) / 400
    u3, uturn = shares("uniform")
    b3, bturn = shares("bdd")
    assert b3 > u3 and bturn < uturn


def _px(img, x, y):
    return img.getpixel((int(x), int(y)))


def test_pixels_follow_the_graph():
    W, H = 192, 128
    img, objs = render_scene(base_graph(light={"color": "red", "arrow": "left"},
                                        lanes={"left": "solid", "right": "none"}), W, H)
    light = next(o for o in objs if o["kind"] == "traffic_light")
    x, y, w, h = light["box"]
    red = _px(img, x + w / 2, y + h / 6)       # top lamp lit red
    green = _px(img, x + w / 2, y + 5 * h / 6)  # bottom lamp dark
    assert red[0] > 200 and red[1] < 90 and max(green) < 100
    assert any(o["kind"] == "arrow_light" for o in objs)
    # the solid left line is a wide yellow band just left of the ego lane at the bottom
    yl = _px(img, W / 2 - 0.21 * W, H - 3)
    assert yl[0] > 200 and yl[1] > 170 and yl[2] < 90
    # no lane on the right: grass beyond the ego lane's right edge
    gr = _px(img, W / 2 + 0.21 * W + 0.12 * W, H - 3)
    assert gr[1] > gr[0] and gr[1] > gr[2]
    img2, _ = render_scene(base_graph(light={"color": "green", "arrow": None}), W, H)
    g2 = _px(img2, x + w / 2, y + 5 * h / 6)
    assert g2[1] > 200 and g2[0] < 90


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_bdd_writer_layout_determinism_and_resume(tmp_path):
    out = T.generate_bdd_oia(tmp_path / "a", CFG, progress=False)
    assert out["train"] == {"samples": 30, "skipped": False, "seconds": out["train"]["seconds"]}
    T.generate_bdd_oia(tmp_path / "b", CFG, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")          # same bytes from the same seed
    for split in ("train", "val"):
        ds = bdd_oia.load_split(tmp_path / "a", split)                  # the real loader reads it
        assert ds.stats["samples"] == CFG["splits"][split] and ds.stats["dropped_confusing"] == 0
        assert all(sum(s.actions[i] for s in ds.samples) > 0 for i in range(L.N_ACTIONS))
        assert all(sum(s.reasons[i] for s in ds.samples) > 0 for i in range(L.N_REASONS)), split
        side = {c["file_name"]: c for c in __import__("kit.runs", fromlist=["x"]).read_jsonl(
            tmp_path / "a" / "toy" / f"scenes_{split}.jsonl")}
        for s in ds.samples:                                            # labels == labels(graph)
            assert (s.actions, s.reasons) == tuple(map(list, scenes.labels(side[s.file_name]["graph"])))
    img = tmp_path / "a" / "lastframe" / "data" / ds.samples[0].file_name
    mtime = img.stat().st_mtime_ns
    again = T.generate_bdd_oia(tmp_path / "a", CFG, progress=False)
    assert all(v["skipped"] for v in again.values()) and img.stat().st_mtime_ns == mtime
    changed = T.generate_bdd_oia(tmp_path / "a", {**CFG, "seed": 4}, progress=False)
    assert not changed["train"]["skipped"] and _digest(tmp_path / "a") != _digest(tmp_path / "b")
    assert check_dataset("bdd-oia", tmp_path / "a", "val", progress=False)["samples"] == 24


def test_multi_frame_and_confusing(tmp_path):
    cfg = {**CFG, "frames": 3, "splits": {"train": 40}, "confusing_rate": 0.3}
    T.generate_bdd_oia(tmp_path, cfg, progress=False)
    ds = bdd_oia.load_split(tmp_path, "train")
    assert ds.stats["dropped_confusing"] > 0
    assert ds.stats["samples"] + ds.stats["dropped_confusing"] == 40
    s = ds.samples[0]
    assert len(s.frame_paths) == 3 and s.frame_paths[-1] == s.image_path
    ims = s.load_images()
    assert ims[0].tobytes() != ims[-1].tobytes()                        # things move between frames


def test_coda_writer(tmp_path):
    T.generate_coda_lm(tmp_path, CFG, progress=False)
    for split, n in CFG["coda_splits"].items():
        summary = check_dataset("coda-lm", tmp_path, split, progress=False)  # boxes inside images
        assert summary["samples"] == n
    val = {s.image_path for s in coda_lm.load_split(tmp_path, "Val").samples}
    mini = coda_lm.load_split(tmp_path, "Mini").samples
    assert {s.image_path for s in mini} <= val
    train = coda_lm.load_split(tmp_path, "Train").samples
    assert all(s.image_path.parent == tmp_path / "val" / "images" for s in train)
    regions = [r for s in train for r in s.regions]
    assert regions and all(r["category_name"] in coda_lm.REGION_CLASSES for r in regions)
    assert all(s.suggestion.endswith(".") and s.general_summary for s in train)
    raw = (tmp_path / "CODA-LM" / "Train" / "val_0001.json").read_text()
    assert '"vulnerable_road_users"' in raw and '"traffic signs"' in raw and '"description and explanation"' in raw


def test_captions_and_corpus(tmp_path):
    T.generate_bdd_oia(tmp_path / "bdd", CFG, progress=False)
    T.generate_coda_lm(tmp_path / "coda", CFG, progress=False)
    caps = T.load_captions(tmp_path / "bdd", "train")
    ds = bdd_oia.load_split(tmp_path / "bdd", "train")
    assert set(caps) == {s.file_name for s in ds.samples}
    for c in caps.values():
        low = c.lower()
        assert not any(w in low for w in ("move forward", "turn left", "turn right", "slow down", "should"))
    corpus = T.text_corpus(tmp_path)
    assert set(caps.values()) <= set(corpus) and L.REASONS[13] in corpus
    assert any(t.startswith("Action: ") for t in corpus) and any("Slow down" in t for t in corpus)


def test_prepare_stage(tmp_path):
    from kit import runs
    from kit.data import bdd_oia_root, coda_lm_root
    from kit.params import load_profile
    from kit.stages.prepare_data import run_prepare_data

    P = load_profile("tiny", {"data.toy.splits": {"train": 24, "val": 22, "test": 21},
                              "data.toy.coda_splits": {"Train": 3, "Val": 3, "Test": 2, "Mini": 1}})
    out = run_prepare_data(P, tmp_path)
    m = runs.read_metrics(tmp_path)["prepare"]["datasets"]
    assert m["sizes"]["bdd_oia"] == {"train": 24, "val": 22, "test": 21}
    assert m["sizes"]["coda_lm"] == {"Train": 3, "Val": 3, "Test": 2, "Mini": 1}
    assert bdd_oia_root(P["data"], tmp_path) == Path(m["bdd_oia_root"]) and coda_lm_root(P["data"], tmp_path).is_dir()
    assert all(Path(f).stat().st_size > 5000 for f in out["figures"]) and len(out["figures"]) == 3
    again = run_prepare_data(P, tmp_path)
    assert all(v["skipped"] for v in again["generated"]["bdd_oia"].values())


def test_root_without_prepare_says_what_to_run(tmp_path):
    from kit.data import bdd_oia_root
    from kit.params import load_profile

    with pytest.raises(FileNotFoundError, match="run notebook 00"):
        bdd_oia_root(load_profile("tiny"), tmp_path)
