"""Real-layout loaders and `kit data check` on small hand-made fixtures (tests/fixtures/)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kit.data import DataError, bdd_oia, coda_lm
from kit.data.check import check_dataset

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def bdd(tmp_path):
    dst = tmp_path / "bdd"
    shutil.copytree(FIX / "bdd_oia", dst)
    return dst


def test_bdd_counts_confusing_and_missing():
    ds = bdd_oia.load_split(FIX / "bdd_oia", "train")
    assert ds.stats["images_listed"] == 5
    assert ds.stats["dropped_confusing"] == 1        # category [0,1,0,0,1]
    assert ds.stats["skipped_missing_image"] == 1    # a1b2c3d4-00000005_4.jpg is not on disk
    assert ds.stats["samples"] == len(ds.samples) == 3
    by_id = {s.id: s for s in ds.samples}
    # annotations[k] belongs to the image whose id == k, not to the k-th listed image
    assert by_id["a1b2c3d4-00000001_0"].actions == [0, 1, 0, 0]
    assert by_id["a1b2c3d4-00000002_1"].actions == [1, 0, 0, 0]
    assert by_id["a1b2c3d4-00000004_3"].actions == [1, 0, 1, 0]       # 5-element, flag 0: kept, trimmed
    assert by_id["a1b2c3d4-00000001_0"].reasons[3] == 1 and by_id["a1b2c3d4-00000001_0"].reasons[11] == 1
    assert "a1b2c3d4-00000003_2" not in by_id                         # the confusing one


def test_bdd_frames_and_images():
    ds = bdd_oia.load_split(FIX / "bdd_oia", "train")
    s = {x.id: x for x in ds.samples}["a1b2c3d4-00000001_0"]
    assert len(s.frame_paths) == 2 and s.frame_paths[-1] == s.image_path
    ims = s.load_images()
    assert len(ims) == 2 and all(im.mode == "RGB" for im in ims)
    assert ds.stats["multi_frame"] == 1
    assert bdd_oia.load_split(FIX / "bdd_oia", "train", max_samples=1).stats["samples"] == 1


def test_bdd_wrong_length_reason():
    with pytest.raises(DataError) as e:
        bdd_oia.load_split(FIX / "bdd_oia", "val")
    msg = str(e.value)
    assert "val_25k_images_reasons.json" in msg and "'reason'" in msg and "21" in msg and "20" in msg


def test_bdd_invalid_json_names_file_and_position():
    with pytest.raises(DataError) as e:
        bdd_oia.load_split(FIX / "bdd_oia", "test")
    msg = str(e.value)
    assert "test_25k_images_actions.json" in msg and "line 3" in msg


def test_bdd_id_without_annotation(bdd):
    p = bdd / "train_25k_images_actions.json"
    d = json.loads(p.read_text())
    d["images"][0]["id"] = 17
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"train_25k_images_actions.json.*'id' = 17 has no annotation"):
        bdd_oia.load_split(bdd, "train")


def test_bdd_wrong_length_category(bdd):
    p = bdd / "train_25k_images_actions.json"
    d = json.loads(p.read_text())
    d["annotations"][0]["category"] = [1, 0, 0]
    p.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"'category': expected a list of 4 \(or 5\).*got 3 values"):
        bdd_oia.load_split(bdd, "train")


def test_check_truncated_image(bdd):
    summary = check_dataset("bdd-oia", bdd, "train", progress=False)
    assert summary["samples"] == 3 and summary["dropped_confusing"] == 1 and summary["skipped_missing_image"] == 1
    assert summary["action_counts"]["stop"] == 1
    img = bdd / "lastframe" / "data" / "a1b2c3d4-00000002_1.jpg"
    img.write_bytes(img.read_bytes()[:200])
    with pytest.raises(DataError, match=r"a1b2c3d4-00000002_1.jpg: unreadable or truncated image"):
        check_dataset("bdd-oia", bdd, "train", progress=False)


def test_coda_good_split():
    ds = coda_lm.load_split(FIX / "coda_lm", "Train")
    assert ds.stats["samples"] == 2 and ds.stats["regions"] == 3
    s = ds.samples[0]
    assert s.image_path == FIX / "coda_lm" / "val" / "images" / "0001.jpg"
    assert s.regions[0] == {"region_id": "1", "box": [2.0, 3.0, 20.0, 10.0], "category_name": "car",
                            "text": "Object 1."}
    assert set(s.general) == set(coda_lm.GENERAL_KEYS) and s.general_summary and s.suggestion
    assert ds.stats["regions_per_class"]["traffic_cone"] == 1 and ds.stats["regions_per_class"]["miscellaneous"] == 1
    assert check_dataset("coda-lm", FIX / "coda_lm", "Train", progress=False)["samples"] == 2


def test_coda_missing_image():
    with pytest.raises(DataError, match=r"test_0009.json: its image .*0009.jpg is missing"):
        coda_lm.load_split(FIX / "coda_lm", "Val")


def test_coda_box_outside_image():
    coda_lm.load_split(FIX / "coda_lm", "Test")  # the loader alone does not open images
    with pytest.raises(DataError, match=r"test_0002.json: field 'region_perception.1.box'.*outside its image.*64x48"):
        check_dataset("coda-lm", FIX / "coda_lm", "Test", progress=False)


def test_coda_invalid_json():
    with pytest.raises(DataError, match=r"Mini/test_0001.json: invalid JSON at line 1 column \d+"):
        coda_lm.load_split(FIX / "coda_lm", "Mini")


def test_region_classes():
    assert coda_lm.region_class("car") == "vehicle" and coda_lm.region_class("cyclist") == "vru"
    assert coda_lm.region_class("traffic_cone") == "traffic_cone" and coda_lm.region_class("dog") == "miscellaneous"
    # matched exactly, as the official evaluator matches: other spellings are not scored (None), and counted
    assert coda_lm.region_class("Traffic Light") is None and coda_lm.region_class("overturned_vehicle") is None
    assert coda_lm.region_class("suitcace") == "miscellaneous"  # the official list's own spelling
    assert set(coda_lm.REGION_CLASSES.values()) == set(coda_lm.CLASSES)


def test_unknown_kind_and_split():
    with pytest.raises(DataError, match="expected 'bdd-oia' or 'coda-lm'"):
        check_dataset("kitti", FIX / "bdd_oia", "train")
    with pytest.raises(DataError, match="expected one of train, val, test"):
        bdd_oia.load_split(FIX / "bdd_oia", "Train")


def test_cli_data_check(capsys):
    from kit import cli

    if not hasattr(cli, "main"):
        pytest.skip("kit.cli.main not written yet")
    rc = cli.main(["data", "check", "bdd-oia", str(FIX / "bdd_oia"), "--split", "train"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["dropped_confusing"] == 1
    rc = cli.main(["data", "check", "coda-lm", str(FIX / "coda_lm"), "--split", "Val"])
    assert rc != 0 and "test_0009.json" in capsys.readouterr().err
