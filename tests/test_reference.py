"""Reference bands and `kit verify`: bands made from run directories, a run inside them, one outside, one
with a missing number, one made with other settings; the paired comparisons; the README's results
section is exactly what params/expected/tiny.json renders."""
import json

import pytest

from kit import reference, runs
from kit.cli import main
from kit.params import load_profile


def _run(tmp_path, name, *, sft, direct, stage2=None, overall=None, params=None, stages=("prepare", "sft_baseline"),
         torch_version="2.14.1"):
    """A run directory as `kit run` leaves it: manifest (profile, params, finished notebooks) and metrics."""
    rd = tmp_path / name
    P = params or load_profile("tiny")
    m = {"prepare": {"models": {"clip": {"retrieval_after": {"i2t_top1": 0.9}}}},
         "sft_baseline": {"eval": {"action": {"macro_f1": sft}, "reason": {"macro_f1": sft / 2}},
                          "majority": {"action": {"macro_f1": 0.18}, "reason": {"macro_f1": 0.0}}},
         "direct": {"eval": {"action": {"macro_f1": direct}, "reason": {"macro_f1": 0.05}}}}
    if stage2 is not None:
        m["action_sft"] = {"eval": {"action": {"macro_f1": stage2}}}
    if overall is not None:
        m["coda_sft"] = {"coda_lm": {"name": "sft", "scores": {"overall_100": overall}}}
        m["coda_direct"] = {"coda_lm": {"name": "direct", "scores": {"overall_100": overall - 30}}}
    runs.write_json(rd / "metrics.json", m)
    runs.write_json(rd / "manifest.json", {"profile": "tiny", "params": P, "lock": {"sha256": "abc"},
                                           "packages": {"torch": torch_version, "kit": "0.1.0"},
                                           "stages": {s: {"status": "ok"} for s in stages}})
    return rd


@pytest.fixture
def bands(tmp_path):
    recs = [{"settings": {"seed": s, "threads": t}, "run_dir": str(_run(tmp_path, f"s{s}t{t}", sft=0.60 + 0.01 * s + 0.002 * t,
                                                                        direct=0.02, stage2=0.55 + 0.01 * s, overall=50 + s,
                                                                        params=load_profile("tiny", [f"seed={s}"])))}
            for s in range(3) for t in (1, 2)]
    return reference.bands_from_runs("tiny", recs, reference.made_by("kit sweep --expected", [r["run_dir"] for r in recs]))


def test_bands_hold_each_number_over_the_runs(bands):
    sft = bands["metrics"]["SFT action mF1"]
    assert sft["n"] == 6 and sft["min"] == pytest.approx(0.602) and sft["max"] == pytest.approx(0.624)
    assert sft["path"] == "sft_baseline.eval.action.macro_f1" and len(sft["values"]) == 6
    assert "A sft: overall" in bands["metrics"] and bands["runs"][1] == {"seed": 0, "threads": 2}
    assert bands["params"] == reference._comparable(load_profile("tiny"))  # the seed aside


def test_a_runs_time_is_its_notebooks_unless_it_reused_an_earlier_training():
    man = {"stages": {"prepare": {"status": "ok", "seconds": 100.0}, "sft_baseline": {"status": "ok", "seconds": 50.5}}}
    assert reference.run_seconds(man, {"sft_baseline": {"reused": False}}) == 150.5
    # resumed after an interruption: its training came from the earlier invocation, its time is not the work's
    assert reference.run_seconds(man, {"spin": {"original": {"round_1": {"train": {"reused": True}}}}}) is None
    assert reference.run_seconds(man, {"sft_baseline": {"train": {"resumed_from": "<run>/x/checkpoint-50"}}}) is None
    assert reference.run_seconds(man, {"clip_finetune": {"resumed": True}}) is None
    assert reference.run_seconds(man, {"sft_baseline": {"resumed_from": None, "resumed": False}}) == 150.5
    assert reference.run_seconds({"stages": {"prepare": {"status": "ok"}}}, {}) is None


def test_a_run_inside_its_bands_passes(tmp_path, bands, capsys):
    rd = _run(tmp_path, "mine", sft=0.61, direct=0.02, stage2=0.56, overall=51,
              stages=("prepare", "sft_baseline", "action_sft"))
    res = reference.verify(rd, bands)
    assert res["ok"], reference.verify_table(res)
    st = {r["metric"]: r["status"] for r in res["rows"]}
    assert st["SFT action mF1"] == "inside" and st["A sft: overall"] == "inside"
    path = tmp_path / "bands.json"
    runs.write_json(path, bands)
    assert main(["verify", str(rd), "--bands", str(path)]) == 0
    out = capsys.readouterr().out
    assert "SFT action mF1" in out and "all inside" in out


def test_a_number_outside_fails_naming_it(tmp_path, bands, capsys):
    rd = _run(tmp_path, "mine", sft=0.43, direct=0.02, stage2=0.56, overall=51, stages=("prepare", "sft_baseline", "action_sft"))
    res = reference.verify(rd, bands)
    bad = [r for r in res["rows"] if r["status"] == "OUTSIDE"]
    assert not res["ok"] and {r["metric"] for r in bad} == {"SFT action mF1", "SFT reason mF1"}
    path = tmp_path / "bands.json"
    runs.write_json(path, bands)
    assert main(["verify", str(rd), "--bands", str(path)]) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE" in out and "2 outside or missing" in out


def test_a_missing_number_fails_and_a_stage_not_run_does_not(tmp_path, bands):
    # notebook 06 finished but left no stage-2 number: missing; a Track B run has no Track A numbers: not run
    rd = _run(tmp_path, "mine", sft=0.61, direct=0.02, stages=("prepare", "sft_baseline", "action_sft"),
              params=load_profile("tiny", ["tracks=[B]"]))
    res = reference.verify(rd, bands)
    st = {r["metric"]: r["status"] for r in res["rows"]}
    assert st["stage-2 action mF1"] == "missing" and not res["ok"]
    assert st["A sft: overall"] == "not run"
    rd2 = _run(tmp_path, "mine2", sft=0.61, direct=0.02, params=load_profile("tiny", ["tracks=[B]"]))  # 00, 03 only
    res2 = reference.verify(rd2, bands)
    assert res2["ok"] and {r["status"] for r in res2["rows"]} == {"inside", "not run"}


def test_other_packages_are_named(tmp_path, bands):
    rd = _run(tmp_path, "mine", sft=0.61, direct=0.02, stage2=0.56, overall=51,
              stages=("prepare", "sft_baseline", "action_sft"), torch_version="2.15.0")
    res = reference.verify(rd, bands)
    assert res["ok"] and res["notes"] == ["made with other packages than the bands were: torch 2.15.0 (bands: 2.14.1)"]


def test_other_settings_get_no_verdict(tmp_path, bands, capsys):
    rd = _run(tmp_path, "mine", sft=0.61, direct=0.02, params=load_profile("tiny", ["sft.epochs=9"]))
    res = reference.verify(rd, bands)
    assert not res["ok"] and any("sft.epochs" in n for n in res["notes"])
    path = tmp_path / "bands.json"
    runs.write_json(path, bands)
    assert main(["verify", str(rd), "--bands", str(path)]) == 1
    assert main(["verify", str(rd), "--bands", str(path), "--if-bands"]) == 0   # make run: said, not failed
    assert "do not apply" in capsys.readouterr().out


def test_verify_of_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "manifest.json: not found" in err


def test_comparisons_are_paired_with_an_interval():
    per_run = [{"SFT action mF1": 0.6 + d, "Direct action mF1": 0.02, "stage-2 action mF1": 0.6 + d + e,
                "majority action mF1": 0.18}
               for d, e in [(0.01, 0.01), (0.02, -0.01), (-0.01, 0.02), (0.0, -0.02)]]
    comps = {c["name"]: c for c in reference.compare(per_run)}
    c = comps["SFT beats Direct, action mF1"]
    assert c["holds"] == c["n"] == 4 and c["ci"][0] <= c["mean"] <= c["ci"][1] and c["ci"][0] > 0.5
    assert reference.verdict(c) == "holds in 4 of 4 runs"
    same = comps["stage 2 answers actions about as well as SFT (action mF1)"]
    assert same["claim"] == "~" and same["diffs"] == pytest.approx([0.01, -0.01, 0.02, -0.02])
    assert same["ci"][0] < 0 < same["ci"][1]
    worse = reference.compare([{"SFT action mF1": 0.1 * i, "Direct action mF1": 0.15} for i in range(4)])
    assert reference.verdict(worse[0]) == "holds in 2 of 4 runs: not a finding"


def test_readme_results_are_rendered_from_the_bands_file():
    bands = reference.load_bands("tiny")
    assert bands is not None, "params/expected/tiny.json is missing: run kit sweep ... --expected"
    assert reference.readme_matches("tiny"), "README's results differ from params/expected/tiny.json: " \
                                             "`kit sweep --readme tiny` renders them again"
    # every number the README states in the section is the file's (spot check: the SFT row)
    sft = bands["metrics"]["SFT action mF1"]
    row = f"| {reference.metric_label('SFT action mF1')} | {reference._fmt(sft['mean'])} ± "
    assert row in reference.README.read_text()
    # at least two seeds, each with one and two threads, and every band over all of the runs (the
    # README's first line of the section says how many; more seeds narrow the bands)
    assert {"mean", "sd", "min", "max", "n"} <= set(sft) and sft["n"] == len(bands["runs"]) >= 4
    assert len({r["seed"] for r in bands["runs"]}) >= 2
    assert {r["threads"] for r in bands["runs"]} == {1, 2}
    assert all(m["n"] == len(bands["runs"]) for m in bands["metrics"].values())
    assert bands["made_by"]["lock"] and bands["made_by"]["command"].startswith("kit sweep --profile tiny")


def test_render_then_update_roundtrip(tmp_path, bands):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n" + reference.BEGIN.format(profile="tiny") + "\nold\n" + reference.END.format(profile="tiny")
                      + "\nafter\n")
    reference.update_readme(bands, readme)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "\nold\n" not in text
    assert "| SFT baseline action mF1 | 0.613 ± " in text and "holds in 6 of 6 runs" in text
    json.dumps(bands)  # the file is plain JSON


def _more(tmp_path, seeds, *, shift=0.0):
    """Run records of a later sweep, made like the fixture's (`shift` moves seed 0's numbers)."""
    return [{"settings": {"seed": s, "threads": t},
             "run_dir": str(_run(tmp_path, f"later-s{s}t{t}", sft=0.60 + 0.01 * s + 0.002 * t + (shift if s == 0 else 0.0),
                                 direct=0.02, stage2=0.55 + 0.01 * s, overall=50 + s,
                                 params=load_profile("tiny", [f"seed={s}"])))}
            for s in seeds for t in (1, 2)]


def test_a_later_sweep_extends_the_bands_when_it_reproduces_one_of_their_runs(tmp_path, bands):
    # the file as an earlier kit wrote it (no per_run): its runs come back from each metric's values
    old = {k: v for k, v in bands.items() if k != "per_run"}
    recs = _more(tmp_path, [0, 3])
    new = reference.bands_from_runs("tiny", recs, reference.made_by("kit sweep --seeds 0,3 --expected --extend",
                                                                    [r["run_dir"] for r in recs]))
    both = reference.extend_bands(old, new)
    sft = both["metrics"]["SFT action mF1"]
    assert sft["n"] == 8 == len(both["runs"]) and sft["max"] == pytest.approx(0.634)  # seed 3 added, seed 0 not twice
    assert both["runs"][-2:] == [{"seed": 3, "threads": 1}, {"seed": 3, "threads": 2}]
    assert [c["n"] for c in both["comparisons"]] == [8] * len(both["comparisons"])
    step = both["extended_by"][0]
    assert step["reproduced"] == [{"seed": 0, "threads": 1}, {"seed": 0, "threads": 2}]
    assert step["added"] == [{"seed": 3, "threads": 1}, {"seed": 3, "threads": 2}]
    assert both["made_by"] == bands["made_by"]  # the first sweep stays the bands' origin
    text = reference.readme_section(both)
    assert "then `kit sweep --seeds 0,3 --expected --extend`" in text and "adding 2 runs (seed 3 with 1 thread; " in text
    assert "8 runs (seeds 0, 1, 2, 3 x 1 and 2 threads)" in text
    # and again: the extended file keeps its runs, so a third sweep adds to all eight
    assert len(reference.extend_bands(both, new)["extended_by"]) == 2


def test_extending_refuses_what_is_not_the_same_experiment(tmp_path, bands):
    def new_of(recs):
        return reference.bands_from_runs("tiny", recs, reference.made_by("kit sweep", [r["run_dir"] for r in recs]))

    with pytest.raises(ValueError, match=r"seed 0 with 1 thread gives SFT action mF1 = 0\.6\d* here and 0\.602 in the "
                                         r"bands: .* add them with --other-machine"):
        reference.extend_bands(bands, new_of(_more(tmp_path / "a", [0, 3], shift=1e-4)))
    with pytest.raises(ValueError, match="at least one run the bands already hold"):
        reference.extend_bands(bands, new_of(_more(tmp_path / "b", [3])))
    recs = [{"settings": {"seed": 0, "threads": 1},
             "run_dir": str(_run(tmp_path / "c", "s0", sft=0.602, direct=0.02, stage2=0.55, overall=50,
                                 params=load_profile("tiny", ["seed=0", "sft.lr=0.0005"])))}]
    with pytest.raises(ValueError, match=r"parameters differ from the bands' in sft\.lr"):
        reference.extend_bands(bands, new_of(recs))
    recs = [{"settings": {"seed": 0, "threads": 1},
             "run_dir": str(_run(tmp_path / "d", "s0", sft=0.602, direct=0.02, stage2=0.55, overall=50,
                                 params=load_profile("tiny", ["seed=0"]), torch_version="2.15.0"))}]
    with pytest.raises(ValueError, match=r"another set of package versions \(\{'torch': '2.15.0'\}\)"):
        reference.extend_bands(bands, new_of(recs))


def test_runs_of_another_machine_join_the_bands_as_runs_of_their_own(tmp_path, bands):
    # the same commit on another CPU of the same kind: seed 0 gives other floats there, and both stay
    recs = _more(tmp_path, [0, 3], shift=1e-4)
    # its kernel's version is not the kind of machine
    for r in recs:
        man = runs.read_json(f"{r['run_dir']}/manifest.json")
        runs.write_json(f"{r['run_dir']}/manifest.json", {**man, "machine": {"cpu": None, "cores": None, "platform": "other"}})
    new = reference.bands_from_runs("tiny", recs, reference.made_by("kit sweep --seeds 0,3", [r["run_dir"] for r in recs]),
                                    times=False)
    both = reference.extend_bands(bands, new, other_machine=True)
    assert len(both["runs"]) == 10 and both["metrics"]["SFT action mF1"]["n"] == 10
    assert [r["sweep"] for r in both["per_run"]] == [0] * 6 + [1] * 4
    assert all(r["seconds"] is None for r in both["per_run"][6:])
    step = both["extended_by"][0]
    assert step["other_machine"] and step["differed"] == [{"seed": 0, "threads": 1}, {"seed": 0, "threads": 2}]
    assert step["reproduced"] == []
    text = reference.readme_section(both)
    assert "on another machine of the same kind, adding 4 runs" in text and "gave other numbers there" in text
    assert "10 runs (seeds 0, 1, 2, 3 x 1 and 2 threads)" in text
    # another kind of machine is another experiment
    runs.write_json(f"{recs[0]['run_dir']}/manifest.json",
                    {**runs.read_json(f"{recs[0]['run_dir']}/manifest.json"), "machine": {"cpu": "Apple M3", "cores": 8}})
    other = reference.bands_from_runs("tiny", recs[:1], reference.made_by("kit sweep", [recs[0]["run_dir"]]))
    with pytest.raises(ValueError, match="another kind of machine"):
        reference.extend_bands(bands, other, other_machine=True)


def test_the_bands_are_of_the_profile_as_it_is_now():
    """A change to the tiny profile lands with bands made under it: otherwise `kit verify` tells every
    user that their run's parameters differ from the reference sweep's and gives no verdict."""
    bands = reference.load_bands("tiny")
    differs = reference._diff_keys(reference._comparable(load_profile("tiny")), bands["params"])
    assert not differs, (f"params/expected/tiny.json was made with other values of {differs}: make the bands "
                         "again (kit sweep --profile tiny --seeds 0,1,2,3,4 --threads 1,2 --expected)")
