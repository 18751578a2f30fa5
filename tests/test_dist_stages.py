"""Stages under `accelerate launch` with 2 processes on a CPU (gloo), on a miniature toy run: the SFT
stages, a SPIN round (DPO), a short RLOO stage, stage 2 and the synthesis pipeline finish, the second
process writes nothing but its own partial results, and the metrics have the same keys as one process's.

How: a run directory is prepared once in this process (data, CLIP, VLM, the CLIP reward); copies of
it then run the stages, in one process here and in two through
`accelerate launch --multi_gpu` (torchrun; kit.dist asks for CPU processes without a GPU). A
sitecustomize on the launched processes' path logs every file each process moves into place
(the kit's writes are atomic: a temp file, then os.replace) or opens for writing from Python.
"""
import json
import os
import shutil

import pytest

from kit import runs
from kit.params import PROJECT_ROOT

pytestmark = pytest.mark.slow

MINI = {
    "data.toy.splits": {"train": 24, "val": 12, "test": 12},
    "data.toy.coda_splits": {"Train": 4, "Val": 2, "Test": 3, "Mini": 2},
    "pretrain.clip_epochs": 1, "pretrain.vlm_epochs": 1, "pretrain.vlm_show": 2, "pretrain.vlm_caption_tokens": 8,
    "clip_finetune.epochs": 1, "clip_finetune.splits": {"train": 40, "val": 16, "test": 16},
    "clip_finetune.compare_targets": False, "clip_finetune.table_samples": 4,
    "sft.epochs": 1, "sft.max_steps": 4, "sft.batch_size": 4, "sft.logging_steps": 1, "eval.max_new_tokens": 8,
    "eval.batch_size": 4,
    "rloo.train_samples": 8, "rloo.epochs": 1, "rloo.k": 2, "rloo.max_new_tokens": 4, "rloo.eval_samples": 5,
    "rloo.describe_train_samples": 5, "rloo.variance_prompts": 1, "rloo.variance_repeats": 2,
    "coda.max_new_tokens": {"general_perception": 8, "region_perception": 8, "driving_suggestion": 8},
    "coda.batch_size": 4, "coda_sft.max_steps": 3, "coda_sft.batch_size": 4, "coda_sft.logging_steps": 1,
    "spin.rounds": 1, "spin.variants": ["synthetic"], "spin.prompts_per_round": 10, "spin.batch_size": 2,
    "spin.logging_steps": 1, "action_sft.epochs": 1, "action_sft.max_new_tokens": 4,
    "data.toy.coda_unlabeled": 6, "synth.chunk_size": 2, "synth.caption.max_new_tokens": 8,
}
# Track B's SFT; Track A's synthesis pipeline (its chunks split between the processes), SFT on Train and
# on Train + synthetic, and a SPIN round of the synthetic variant (generation, its synthetic split written
# once, DPO, the judge; it starts from the SFT model the same number of processes made); a short RLOO
# stage and stage 2 after it
STAGES = ["sft_baseline", "synthesis", "coda_sft", "coda_sft_synth", "spin", "rloo", "action_sft"]
SPIN_ROUND = "spin/synthetic/round_1"

SITECUSTOMIZE = r'''
import builtins
import os
_log = os.environ.get("KIT_TEST_WRITE_LOG")
if _log:
    _replace, _rename, _open = os.replace, os.rename, builtins.open

    def _note(dst):
        with _open(f"{_log}.{os.environ.get('RANK', '0')}", "a") as f:
            f.write(f"{os.path.abspath(os.fspath(dst))}\n")

    def replace(src, dst, *a, **k):
        _replace(src, dst, *a, **k)
        _note(dst)

    def rename(src, dst, *a, **k):
        _rename(src, dst, *a, **k)
        _note(dst)

    def opened(file, mode="r", *a, **k):
        f = _open(file, mode, *a, **k)
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            _note(file)
        return f

    os.replace, os.rename, builtins.open = replace, rename, opened
'''

LAUNCHED = r'''
import sys
from kit import dist
from kit.notebook import setup
from kit.stages import run_stage

rd, stages, sets = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
for name in stages:
    P, run_dir = setup("tiny", rd, sets)
    run_stage(name, P, run_dir)
dist.close()
'''


def _sets() -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in MINI.items()]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The prepared miniature run (one process): everything the three stages start from."""
    from kit.notebook import setup
    from kit.stages import run_stage

    rd = tmp_path_factory.mktemp("dist") / "base"
    for name in ("prepare_data", "prepare_clip", "prepare_vlm", "clip_finetune"):
        P, rd = setup("tiny", rd, _sets())
        run_stage(name, P, rd)
    return rd


def _keys(d, prefix=""):
    """Every key path of a nested dict (list items are not descended into: their count may differ)."""
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict):
            out |= _keys(v, prefix + k + "/")
    return out


@pytest.fixture(scope="module")
def two_runs(base, tmp_path_factory, accelerate_launch):
    """The three stages in one process (here) and in two (accelerate launch), each on a copy of `base`."""
    from kit.notebook import setup
    from kit.stages import run_stage

    root = tmp_path_factory.mktemp("dist-runs")
    one, two = root / "one", root / "two"
    shutil.copytree(base, one)
    shutil.copytree(base, two)
    for name in STAGES:
        P, rd = setup("tiny", one, _sets())
        run_stage(name, P, rd)

    shim = root / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (root / "launched.py").write_text(LAUNCHED)
    log = root / "writes"
    env = {"KIT_TEST_WRITE_LOG": str(log), "PYTHONPATH": os.pathsep.join([str(shim), str(PROJECT_ROOT)])}
    r = accelerate_launch(root / "launched.py", str(two), ",".join(STAGES), *_sets(), cwd=root, env=env, timeout=900,
                          check=False)
    (root / "launch.log").write_text(r.stdout + r.stderr)
    # the first traceback is the process that failed first (the other then loses its peer)
    first = r.stderr.find("Traceback")
    assert r.returncode == 0, f"{root / 'launch.log'}:\n" + r.stderr[max(first, 0):max(first, 0) + 6000]
    writes = {rank: (log.with_name(f"writes.{rank}").read_text().splitlines()
                     if log.with_name(f"writes.{rank}").exists() else []) for rank in (0, 1)}
    return one, two, writes


@pytest.mark.parametrize("stage", STAGES)
def test_stage_finishes_in_two_processes_with_the_metric_keys_of_one(two_runs, stage):
    one, two, _ = two_runs
    m1, m2 = runs.read_metrics(one), runs.read_metrics(two)
    key = {"spin": SPIN_ROUND}.get(stage, stage)
    assert key in m2, f"{stage}: nothing recorded by the 2-process run"
    assert _keys(m2[key]) == _keys(m1[key])
    if stage == "spin":
        assert _keys(m2["spin"]) == _keys(m1["spin"]) and m2["spin"]["variants"]["synthetic"]["complete"]


def test_second_process_writes_only_its_own_partial_results(two_runs):
    one, two, writes = two_runs
    assert writes[0], "the main process wrote nothing through the kit's atomic writes?"
    # the second process's own: its block of generated answers, its synthesis chunks, the judge answers it asked for
    # (files outside the run directory, such as a library's cache, are not the kit's)
    theirs = [w for w in writes[1] if w.startswith(str(two)) and ".partial." not in w and "judge_cache" not in w
              and "/synthesis/work/" not in w]
    assert any("/synthesis/work/" in w for w in writes[1]), "the second process synthesized no chunk"
    assert not theirs, f"the second process wrote shared files: {theirs[:5]}"
    # the shared files are the main process's, and no partial or temp file is left behind
    for f in ("metrics.json", "sft_baseline/predictions.jsonl", "samples.jsonl", "round_1/pairs.jsonl",
              "coda_sft/coda_lm/general_perception_answer.jsonl", "synthesis/records.jsonl", "synthesis/card.json"):
        assert any(w.endswith(f) for w in writes[0]), f
    assert not list(two.rglob("*.partial*")) and not [p for p in two.rglob("*.tmp*") if p.is_file()]


def _checkpoint(entry):
    """The first `checkpoint` path in a stage's metrics entry (its trained model: <checkpoints>/<key>/final)."""
    if isinstance(entry, dict):
        if isinstance(entry.get("checkpoint"), str):
            return entry["checkpoint"]
        for v in entry.values():
            if (c := _checkpoint(v)) is not None:
                return c
    return None


def test_two_process_models_are_keyed_apart_from_one_process_models(two_runs):
    """A model 2 processes trained (each its share of every batch) is not reused by one process."""
    one, two, _ = two_runs
    for stage in ("sft_baseline", "coda_sft", "coda_sft_synth", SPIN_ROUND, "rloo", "action_sft"):
        c1, c2 = _checkpoint(runs.read_metrics(one)[stage]), _checkpoint(runs.read_metrics(two)[stage])
        assert c1 and c2, stage
        k1, k2 = os.path.basename(os.path.dirname(c1)), os.path.basename(os.path.dirname(c2))
        assert k1 != k2, stage


def test_rloo_samples_pair_each_prompt_with_its_own_completions_and_rewards(two_runs):
    """samples.jsonl names a prompt by id beside completions and rewards: under 2 processes all three
    must be the same prompt's (the rewards are every process's, gathered), checked by scoring again."""
    _, two, _ = two_runs
    from kit.notebook import setup
    from kit.reward import load_reward
    from kit.rl.results import work_dir
    from kit.rl.samples import frames_of, load_samples

    P, rd = setup("tiny", two, _sets())
    by_id = {s.id: s for s in load_samples(P["data"], rd, "train")}
    reward = load_reward(P, rd)
    samples = runs.read_jsonl(work_dir(rd) / "samples.jsonl")
    assert samples
    for s in samples:
        frames = frames_of(by_id[s["id"]], P["rloo"]["frames"])
        again = reward.clip_score([frames] * len(s["completions"]), s["completions"], kind=P["clip_finetune"]["reward_score"])
        assert again == pytest.approx(s["rewards"], abs=1e-4), s["id"]


def test_kit_run_launches_each_notebooks_stages_under_accelerate(tmp_path, monkeypatch):
    """`kit run --launcher accelerate`: notebook 00's stages in 2 processes (params/accelerate/cpu.yaml),
    then the notebook in one, which reuses what they trained (keyed by the launch's 2 processes)."""
    from kit import runner

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    rd = tmp_path / "run"
    out = runner.run("tiny", str(rd), only=["00"], overrides=dict(MINI), track="B", launcher="accelerate",
                     config_file=str(PROJECT_ROOT / "params" / "accelerate" / "cpu.yaml"))
    assert out["stages"] == {"prepare": "ok"}
    models = runs.read_metrics(rd)["prepare"]["models"]
    # trained by the launch: the notebook, one process, found them under the 2-process keys
    assert models["clip"]["processes"] == 2 and models["vlm"]["processes"] == 2
    assert "KIT_KEY_PROCESSES" not in os.environ
