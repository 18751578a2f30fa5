"""`kit sweep`: one run directory per combination, a summary whose numbers are the runs' own, a
rerun that does no work, and a failed combination that does not stop the others."""
import json
import statistics

import pytest

from kit import reference, runs
from kit.reference import all_metrics
from kit.sweep import combinations, combo_name, parse_grid, run_sweep, summarize


def test_grid_and_names():
    grid = parse_grid(["rloo.beta=0,0.02", "rloo.baseline=rloo,greedy"])
    assert grid == {"rloo.beta": [0, 0.02], "rloo.baseline": ["rloo", "greedy"]}
    combos = combinations([0, 1], grid)
    assert len(combos) == 8 and combos[0] == {"rloo.baseline": "rloo", "rloo.beta": 0, "seed": 0}
    assert combo_name(combos[1]) == "rloo.baseline=rloo__rloo.beta=0__seed=1"
    assert len({combo_name(c) for c in combos}) == 8
    with pytest.raises(SystemExit, match="KEY=V1,V2"):
        parse_grid(["rloo.beta"])
    # thread counts: every combination once per count, the count last in the name
    combos = combinations([0, 1], {}, threads=[1, 2])
    assert [combo_name(c) for c in combos] == ["seed=0__threads=1", "seed=0__threads=2", "seed=1__threads=1",
                                               "seed=1__threads=2"]


def test_metrics_find_track_a_models():
    m = {"coda_sft": {"coda_lm": {"name": "sft", "scores": {"overall_100": 50.0, "general_perception": {"score_100": 60.0}}}},
         "spin/original/round_1": {"coda_lm": {"name": "spin-orig r1", "scores": {"overall_100": 45.0}}},
         "evaluate": {"elo": {"bootstrap": {"sft": {"median": 1010.0, "lo": 990.0, "hi": 1030.0}}}},
         "sft_baseline": {"eval": {"action": {"macro_f1": 0.4}}}}
    h = all_metrics(m)
    assert reference.headline_metrics(m) == {"SFT action mF1": 0.4, "A sft: overall": 50.0, "A sft: Elo": 1010.0,
                                             "A spin-orig r1: overall": 45.0}
    assert h == {"SFT action mF1": 0.4, "A sft: overall": 50.0, "A sft: general": 60.0, "A sft: Elo": 1010.0,
                 "A sft: Elo 2.5%": 990.0, "A sft: Elo 97.5%": 1030.0, "A spin-orig r1: overall": 45.0}


# notebook 00 alone, Track B, tiny sizes: each combination is a real `kit run` of a few seconds of work
BASE = ["data.toy.splits={train: 48, val: 16, test: 16}", "pretrain.clip_epochs=2", "pretrain.vlm_epochs=1",
        "pretrain.vlm_show=2", "pretrain.vlm_caption_tokens=8"]


@pytest.mark.slow
def test_two_seed_sweep_summary_rerun_and_a_failure(tmp_path, capsys):
    # a 2-value grid: a BDD-OIA root that is no folder passes the profile's checks and fails at the start of
    # notebook 00 (its combination is reported, the other still finishes)
    sd = tmp_path / "sweep"
    bad_root = str(tmp_path / "no-BDD-OIA")
    rec = run_sweep("tiny", [0], {"data.bdd_oia_root": [bad_root, None]}, only=["00"], track="B", sweep_dir=sd,
                    base=BASE)
    ok = [combo_name({"data.bdd_oia_root": None, "seed": s}) for s in (0, 1)]
    bad = combo_name({"data.bdd_oia_root": bad_root, "seed": 0})
    assert ok == ["data.bdd_oia_root=null__seed=0", "data.bdd_oia_root=null__seed=1"]
    by = {r["name"]: r for r in rec["runs"]}
    assert sorted(by) == sorted([ok[0], bad])
    assert (by[ok[0]]["status"], by[bad]["status"]) == ("ok", "failed")
    # the error names where it failed: notebook 00 (one job) or its first stage's log (stages side by side)
    assert "00_prepare" in by[bad]["error"] or "stage_prepare_data.log" in by[bad]["error"]
    assert [f["name"] for f in rec["summary"]["failed"]] == [bad]

    # a rerun of what finished does no work: every notebook is skipped
    again = run_sweep("tiny", [0], {"data.bdd_oia_root": [None]}, only=["00"], track="B", sweep_dir=sd, base=BASE)
    assert [r["notebooks"] for r in again["runs"]] == [{"prepare": "skipped"}]

    # another seed, in the same folder with the same settings, joins the runs there (sweep.json keeps every call)
    more = run_sweep("tiny", [1], {"data.bdd_oia_root": [None]}, only=["00"], track="B", sweep_dir=sd, base=BASE)
    assert [r["name"] for r in more["runs"]] == ok
    assert len(more["calls"]) == 2 and "--seeds 1" in more["summary"]["command"]
    s = more["summary"]
    g = s["groups"]["data.bdd_oia_root=null"]
    for metric in ("pretrained CLIP retrieval top-1", "pretrained VLM caption loss"):
        values = [all_metrics(runs.read_metrics(sd / n))[metric] for n in ok]
        assert g[metric]["n"] == 2 and g[metric]["values"] == values
        assert g[metric]["mean"] == pytest.approx(statistics.mean(values))
        assert g[metric]["sd"] == pytest.approx(statistics.stdev(values))
    assert values[0] != values[1]  # the seed reaches the runs
    assert len(s["groups"]) == 1
    assert (sd / "summary.md").read_text().count("pretrained VLM caption loss") == 1
    assert (sd / "figures" / "pretrained_VLM_caption_loss.png").is_file()
    man = runs.read_json(sd / ok[0] / "manifest.json")
    assert {v["commit"] for v in man["stages"].values()} == {man["git"]["commit"]}  # each notebook's commit

    # --summarize rebuilds the same numbers from files alone (every run directory of the sweep folder; the
    # failed one has no numbers)
    (sd / "summary.json").unlink()
    assert summarize(sd)["groups"]["data.bdd_oia_root=null"] == g
    assert json.loads((sd / "summary.json").read_text())["command"].startswith("kit sweep --profile tiny --seeds")

    # the runs of one grid point become reference bands, and kit verify finds a run of them inside
    recs = list(more["runs"])
    bands = reference.bands_from_runs("tiny", recs, reference.made_by("kit sweep (test)", [r["run_dir"] for r in recs]))
    assert bands["metrics"]["pretrained CLIP retrieval top-1"]["values"] == g["pretrained CLIP retrieval top-1"]["values"]
    assert bands["made_by"]["lock"] == man["lock"]["sha256"]
    assert bands["made_by"]["commit"] and bands["params"]["data"]["toy"]["splits"] == {"train": 48, "val": 16, "test": 16}
    res = reference.verify(sd / ok[0], bands)
    assert res["ok"] and {r["status"] for r in res["rows"]} == {"inside"}, reference.verify_table(res)


def test_a_bad_key_fails_before_anything_runs(tmp_path):
    from kit.params import ParamsError

    with pytest.raises(ParamsError, match="rloo.betta"):
        run_sweep("tiny", [0], {"rloo.betta": [0.1]}, sweep_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
