"""The papermill runner on two small real notebooks: order, skip on rerun, failure report."""
import json
from pathlib import Path

import nbformat
import pytest

from kit import runner, runs
from kit.params import PROJECT_ROOT


def _nb(path, body):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\nrun_dir = "runs/x"\noverrides = {}')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


COUNT = """
from pathlib import Path
from kit.notebook import setup
from kit.runs import record_metrics
P, RUN = setup(profile, run_dir, overrides, stage="{stage}")
f = RUN / "{stage}" / "count.txt"
n = int(f.read_text()) + 1 if f.exists() else 1
f.write_text(str(n))
record_metrics(RUN, "{stage}", {{"count": n, "seed": P["seed"]}})
"""


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    d = tmp_path / "notebooks"
    d.mkdir()
    _nb(d / "00_prepare.ipynb", COUNT.format(stage="prepare"))
    _nb(d / "03_sft_baseline.ipynb", COUNT.format(stage="sft_baseline"))
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", d)
    # stand-ins for the stage table's notebooks: no stages side by side before them (one thread: one
    # stage process, which is kit run's choice too, here and in the processes the tests start)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return d


@pytest.mark.slow
def test_run_skip_and_rerun(nbdir, tmp_path):
    rd = tmp_path / "run"
    runner.run("tiny", str(rd))
    m = runs.read_metrics(rd)
    assert m["prepare"]["count"] == 1 and m["sft_baseline"]["count"] == 1
    man = json.loads((rd / "manifest.json").read_text())
    assert man["stages"]["prepare"]["status"] == "ok" and man["stages"]["sft_baseline"]["seconds"] > 0
    assert man["packages"]["torch"] and "commit" in man["git"] and man["params"]["seed"] == 0
    assert (rd / "notebooks" / "00_prepare.ipynb").exists()

    out = runner.run("tiny", str(rd))                      # unchanged: both skipped
    assert out["stages"] == {"prepare": "skipped", "sft_baseline": "skipped"}
    assert runs.read_metrics(rd)["prepare"]["count"] == 1

    runner.run("tiny", str(rd), only=["3"], force=True)   # --only / --force
    assert runs.read_metrics(rd)["sft_baseline"]["count"] == 2
    assert runs.read_metrics(rd)["prepare"]["count"] == 1

    runner.run("tiny", str(rd), overrides=["seed=5"])     # changed parameters rerun
    m = runs.read_metrics(rd)
    assert m["prepare"]["count"] == 2 and m["prepare"]["seed"] == 5


@pytest.mark.slow
def test_failure_names_notebook_cell_and_output(nbdir, tmp_path):
    _nb(nbdir / "05_rloo.ipynb", "raise ValueError('reward went nowhere')")
    rd = tmp_path / "run"
    with pytest.raises(runner.StageFailed) as e:
        runner.run("tiny", str(rd))
    msg = str(e.value)
    assert "05_rloo.ipynb" in msg and "reward went nowhere" in msg and str(rd / "notebooks" / "05_rloo.failed.ipynb") in msg
    man = json.loads((rd / "manifest.json").read_text())
    assert man["stages"]["rloo"]["status"] == "failed" and man["stages"]["prepare"]["status"] == "ok"


@pytest.mark.slow
def test_an_interrupted_notebook_is_not_done_and_keeps_the_last_finished_copy(nbdir, tmp_path, monkeypatch):
    """Ctrl-C (or kill -9) while a notebook runs: the rerun with the same settings runs it again, the last
    finished executed copy stays until a new one finishes, and the manifest says what happened."""
    import papermill

    rd = tmp_path / "run"
    runner.run("tiny", str(rd))
    good = (rd / "notebooks" / "03_sft_baseline.ipynb").read_text()
    real = papermill.execute_notebook

    def ctrl_c(source, out, **kw):  # the kernel ran a while and wrote part of its notebook, then Ctrl-C
        if "03_" in str(source):
            Path(out).write_text("{}")
            raise KeyboardInterrupt
        return real(source, out, **kw)

    monkeypatch.setattr(papermill, "execute_notebook", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        runner.run("tiny", str(rd), only=["03"], force=True)
    assert (rd / "notebooks" / "03_sft_baseline.ipynb").read_text() == good
    assert (rd / "notebooks" / "03_sft_baseline.interrupted.ipynb").read_text() == "{}"
    man = json.loads((rd / "manifest.json").read_text())
    assert man["stages"]["sft_baseline"]["status"] == "interrupted" and "finished" not in man
    monkeypatch.setattr(papermill, "execute_notebook", real)
    out = runner.run("tiny", str(rd))          # same settings: 00 is done, the interrupted 03 runs again
    assert out["stages"] == {"prepare": "skipped", "sft_baseline": "ok"}
    assert runs.read_metrics(rd)["sft_baseline"]["count"] == 2

    # a kill -9 leaves no chance to mark anything: the marker written before the notebook started says
    # it is not done
    runs.write_json(rd / "sft_baseline" / ".stage.json", {"status": "running", "params_hash": None})
    assert runner.run("tiny", str(rd))["stages"]["sft_baseline"] == "ok"
    # the manifest holds this run's overrides only, not an earlier run's merged in
    runner.run("tiny", str(rd), overrides=["sft.epochs=3"], only=["00"])
    runner.run("tiny", str(rd), overrides=["seed=4"], only=["00"])
    assert json.loads((rd / "manifest.json").read_text())["overrides"] == {"seed": 4}


def test_only_rejects_unknown_numbers(nbdir):
    with pytest.raises(SystemExit, match="--only 09"):
        runner.list_notebooks(["09"])


@pytest.mark.slow
def test_profile_given_as_a_relative_path(nbdir, tmp_path, monkeypatch):
    (tmp_path / "my.yaml").write_text("extends: tiny\nseed: 11\n")
    monkeypatch.chdir(tmp_path)
    rd = tmp_path / "run"
    runner.run("my.yaml", str(rd), only=["00"])
    assert runs.read_metrics(rd)["prepare"]["seed"] == 11


@pytest.mark.slow
def test_one_track_runs_its_notebooks_and_cells_only(nbdir, tmp_path):
    import nbformat

    nb = nbformat.read(nbdir / "03_sft_baseline.ipynb", as_version=4)
    a_cell = nbformat.v4.new_code_cell("raise RuntimeError('a Track A cell ran')")
    a_cell.metadata["tags"] = ["track-A"]
    nb.cells.append(a_cell)
    nbformat.write(nb, nbdir / "03_sft_baseline.ipynb")
    _nb(nbdir / "05_rloo.ipynb", COUNT.format(stage="rloo"))
    _nb(nbdir / "04_iterative_dpo_spin.ipynb", "raise RuntimeError('a Track A notebook ran')")
    assert [p.name[:2] for p in runner.list_notebooks(tracks=["B"])] == ["00", "03", "05"]
    assert [p.name[:2] for p in runner.list_notebooks(tracks=["A"])] == ["00", "03", "04"]
    rd = tmp_path / "run"
    out = runner.run("tiny", str(rd), track="B")
    assert out["stages"] == {"prepare": "ok", "sft_baseline": "ok", "rloo": "ok"}
    executed = nbformat.read(rd / "notebooks" / "03_sft_baseline.ipynb", as_version=4)
    assert not any("track-A" in c.metadata.get("tags", []) for c in executed.cells)
    assert json.loads((rd / "manifest.json").read_text())["params"]["tracks"] == ["B"]
    with pytest.raises(runner.StageFailed, match="a Track A cell ran"):
        runner.run("tiny", str(tmp_path / "both"))


def test_one_track_needs_only_its_dataset(tmp_path):
    from kit.data import DataError
    from kit.params import load_profile
    from kit.stages.prepare_data import run_prepare_data

    over = {"data.toy.splits": {"train": 4, "val": 2, "test": 2}, "data.coda_lm_root": str(tmp_path / "no-CODA-LM")}
    out = run_prepare_data(load_profile("tiny", {**over, "tracks": ["B"]}), tmp_path / "b")
    assert out["coda_lm_root"] is None and "track A not selected" in out["skipped"]["coda_lm"]
    assert out["sizes"]["bdd_oia"]["train"] == 4
    with pytest.raises(DataError, match=r"params data.coda_lm_root: .*no-CODA-LM is not a folder"):
        run_prepare_data(load_profile("tiny", {**over, "tracks": ["A"]}), tmp_path / "a")


def test_launcher_runs_the_stages_each_notebook_calls():
    """`kit run --launcher accelerate` launches, per notebook, the stage functions the notebook calls:
    the stage table must name exactly those, each with the track of the cell that calls it (a stage
    left out would run in one process inside the notebook)."""
    import re

    from kit import pipeline

    for nb in runner.list_notebooks():
        called = {}
        for c in json.loads(nb.read_text())["cells"]:
            if c["cell_type"] != "code":
                continue
            tags = [t[len("track-"):] for t in c.get("metadata", {}).get("tags", []) if t.startswith("track-")]
            for fn in re.findall(r"\b(run_[a-z_]+)\(", "".join(c["source"])):
                called[fn] = tags[0] if tags else None
        table = {s.function.split(":")[1]: s.track for s in pipeline.of_notebook(nb.name[:2])}
        # a stage of one track may sit in an untagged cell only in a notebook of that track alone
        only_track = {t for t in pipeline.TRACKS if nb.name[:2] in pipeline.notebooks_of_track(t)}
        assert called.keys() == table.keys(), nb.name
        for fn, track in table.items():
            assert called[fn] == track or (called[fn] is None and len(only_track) == 1), (nb.name, fn)


def test_launcher_needs_a_config_file_with_a_process_count(tmp_path):
    with pytest.raises(SystemExit, match="--config-file"):
        runner.run("tiny", str(tmp_path / "r"), launcher="accelerate")
    bad = tmp_path / "bad.yaml"
    bad.write_text("num_processes: two\n")
    with pytest.raises(SystemExit, match="num_processes"):
        runner.launched_processes(bad)
    assert runner.launched_processes(PROJECT_ROOT / "params" / "accelerate" / "zero2.yaml") == 8


@pytest.mark.slow
def test_one_kit_run_per_run_folder_and_a_finished_rerun_writes_nothing(nbdir, tmp_path):
    rd = tmp_path / "run"
    runner.run("tiny", str(rd))
    # every notebook done: the rerun skips them all without writing a byte (a finished run folder
    # handed out read-only, or one another run is using, can be rerun to check it)
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in rd.rglob("*")}
    out = runner.run("tiny", str(rd))
    assert out["stages"] == {"prepare": "skipped", "sft_baseline": "skipped"}
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in rd.rglob("*")} == before
    # something to do while another kit run holds the folder: refused at once, naming its pid
    import os

    with runner.run_lock(rd):
        with pytest.raises(runner.RunInUse, match=f"pid {os.getpid()}"):
            runner.run("tiny", str(rd), overrides=["seed=3"])
    assert runs.read_metrics(rd)["prepare"]["seed"] == 0          # nothing ran
    runner.run("tiny", str(rd), overrides=["seed=3"])               # the lock is free again
    assert runs.read_metrics(rd)["prepare"]["seed"] == 3


def test_kit_figures_says_what_is_wrong_in_one_line(tmp_path, capsys):
    from kit.cli import main

    assert main(["figures", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "metrics.json: not found" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{not json")
    assert main(["figures", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "invalid JSON at line 1" in err


SLOW_CELL = """
import time
from pathlib import Path
from kit.notebook import setup
from kit.runs import record_metrics
P, RUN = setup(profile, run_dir, overrides, stage="sft_baseline")
(RUN / "sft_baseline" / "started").write_text("1")
time.sleep(float(__import__("os").environ.get("KIT_TEST_SLEEP", "0")))
record_metrics(RUN, "sft_baseline", {"finished": True, "seed": P["seed"]})
"""


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_notebook_then_a_rerun(nbdir, tmp_path):
    """A real `kill -9` of `kit run` and its kernel while notebook 03 runs: the rerun with the same settings
    skips 00, runs 03 again and ends as an uninterrupted run does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    _nb(nbdir / "03_sft_baseline.ipynb", SLOW_CELL)
    rd = tmp_path / "run"
    code = ("import sys; from kit import runner; runner.NOTEBOOKS_DIR = __import__('pathlib').Path(sys.argv[1]); "
            "runner.run('tiny', sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(nbdir), str(rd)], start_new_session=True,
                            env={**os.environ, "KIT_TEST_SLEEP": "60"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (rd / "sft_baseline" / "started").exists():
        assert time.time() - t0 < 120 and proc.poll() is None, "notebook 03 never started"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)                 # the runner and the kernel it started
    proc.wait()
    assert "finished" not in (runs.read_metrics(rd).get("sft_baseline") or {})
    assert not (rd / "notebooks" / "03_sft_baseline.ipynb").exists()
    out = runner.run("tiny", str(rd))
    assert out["stages"] == {"prepare": "skipped", "sft_baseline": "ok"}
    assert runs.read_metrics(rd)["sft_baseline"]["finished"] is True
    man = json.loads((rd / "manifest.json").read_text())
    assert man["stages"]["sft_baseline"]["status"] == "ok" and man["finished"] >= man["started"]


def test_stages_side_by_side_by_default_on_a_cpu_one_thread_each(monkeypatch):
    """`kit run` on a CPU: one stage process per thread it may use (at most AUTO_JOBS), each with an
    equal share; one process where there is one thread, under accelerate launch, or on --jobs 1."""
    from kit.params import load_profile

    P = load_profile("tiny")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert runner.side_by_side(P, None, None) == (2, 1)
    assert runner.side_by_side(P, 1, None) == (1, 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert runner.side_by_side(P, None, None) == (runner.AUTO_JOBS, 8 // runner.AUTO_JOBS)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runner.side_by_side(P, None, None) == (1, 1)
    assert runner.side_by_side(P, 2, None) == (2, 1)     # asked for: two processes of one thread
    assert runner.side_by_side(P, None, "accelerate") == (1, 1)
    with pytest.raises(SystemExit, match="--jobs with --launcher"):
        runner.side_by_side(P, 2, "accelerate")
    with pytest.raises(SystemExit, match="--jobs 0: expected a positive"):
        runner.side_by_side(P, 0, None)


def test_the_stage_table_orders_what_each_stage_reads():
    """Each stage's `after` names stages listed before it, so the table's order (the notebooks' order,
    one process) and the order side by side (after each one's `after`) both give a stage what it reads;
    every stage but the first waits for one, and the report of each track waits for its last stage."""
    from kit import pipeline

    seen: set[str] = set()
    for s in pipeline.STAGES:
        assert set(s.after) <= seen, (s.name, set(s.after) - seen)
        assert s.after or s is pipeline.STAGES[0], s.name
        seen.add(s.name)
    length = pipeline.chain_lengths([s.name for s in pipeline.STAGES])
    assert max(length, key=length.get) == "prepare_data"
    assert length["evaluate"] == length["coda_evaluate"] == 1
    # every stage of a track reaches that track's report
    for track, report in (("B", "evaluate"), ("A", "coda_evaluate")):
        length = pipeline.chain_lengths([s.name for s in pipeline.STAGES if s.track in (None, track)])
        for n in length:
            if n != report:
                assert length[n] > 1, n


@pytest.mark.slow
def test_a_stage_that_fails_side_by_side_stops_the_run_and_names_its_log(tmp_path):
    """Notebooks 02 and 03 side by side on a run folder without notebook 00's data: their stages fail in
    the worker processes; kit run stops with the failed stage, its error and its log, starts nothing that
    waits on it, marks the notebook failed, and the manifest says what ran."""
    rd = tmp_path / "run"
    with pytest.raises(runner.StageFailed, match=r"stage (clip_finetune|direct) failed in its worker process: "
                                                 r"FileNotFoundError: .*run notebook 00 \(prepare\).*\n"
                                                 r"  its output, with the traceback, is .*logs/stage_\w+\.log"):
        runner.run("tiny", str(rd), only=["02", "03"], track="B", jobs=2)
    man = json.loads((rd / "manifest.json").read_text())
    side = man["side_by_side"]
    assert side["jobs"] == 2 and side["threads_per_stage"] >= 1
    st = {n: v["status"] for n, v in side["stages"].items()}
    assert set(st) == {"clip_finetune", "direct", "sft_baseline"}
    assert "failed" in (st["clip_finetune"], st["direct"]) and st["sft_baseline"] in ("not run", "failed")
    failed = next(n for n in ("clip_finetune", "direct") if st[n] == "failed")
    assert "Traceback" in (rd / "logs" / f"stage_{failed}.log").read_text()
    assert man["stages"]["clip_finetune"]["status"] == "failed"
    assert not (rd / "notebooks" / "02_clip_finetune.ipynb").exists()
    assert "clip_finetune" not in runs.read_metrics(rd)
