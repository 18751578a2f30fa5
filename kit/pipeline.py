"""The stage table: every stage of both papers, one row each, and the notebook folders the runner marks.

A stage is a plain function `(resolved parameters, run directory) -> dict` in kit/stages/. This table
is the only place that lists them; the runner (which notebooks a track runs, what `--launcher
accelerate` launches before each notebook), `kit stage NAME`, `kit figures`, `kit verify` and the
GPU benchmark read it. It names functions and modules as strings, so the bottom layer holds it and
nothing is imported until a stage runs.

Adding a stage: write its function in kit/stages/, add one row here (in notebook order), and call the
function from its notebook (a cell tagged `track-A` or `track-B` where the notebook serves both papers).

>>> [s.name for s in of_notebook("03", tracks=("B",))]
['direct', 'sft_baseline']
>>> sorted(notebooks_of_track("A"))
['00', '01', '03', '04', '07']
>>> stage("rloo").folder, stage("rloo").figures
('rloo', 'kit.rl.figures')
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

TRACKS = ("A", "B")  # A: paper A (CODA-LM, iterative fine-tuning); B: paper B (BDD-OIA, RLOO with a CLIP reward)


@dataclass(frozen=True)
class Stage:
    name: str             # `kit stage NAME`; also its key in metrics.json
    notebook: str         # the notebook that calls it ("03")
    track: str | None     # "A", "B", or None for both papers' set-up
    function: str         # "module:function", imported when the stage runs
    folder: str           # where it writes in the run directory
    figures: str | None = None   # module whose figures_from_run(run_dir) redraws its figures from files
    on_main: bool = False        # under several processes (accelerate), the main process runs it alone:
    #                              the toy world's rendering, the report and the judge's battles are cheap
    #                              or wait on an API with its own concurrency
    after: tuple[str, ...] = ()  # the stages whose results it reads: `kit run --jobs N` starts it once they
    #                              are done (stages side by side, kit.runner.StagePool)


STAGES: tuple[Stage, ...] = (
    Stage("prepare_data", "00", None, "kit.stages.prepare_data:run_prepare_data", "prepare", "kit.data.figures",
          on_main=True),
    Stage("prepare_clip", "00", None, "kit.stages.prepare_clip:run_prepare_clip", "prepare", after=("prepare_data",)),
    Stage("prepare_vlm", "00", None, "kit.stages.prepare_vlm:run_prepare_vlm", "prepare", "kit.stages.prepare_vlm",
          after=("prepare_data",)),
    Stage("synthesis", "01", "A", "kit.stages.synthesis:run_synthesis", "synthesis", "kit.synth.figures",
          after=("prepare_clip", "prepare_vlm")),
    Stage("clip_finetune", "02", "B", "kit.stages.clip_finetune:run_clip_finetune", "clip_finetune",
          "kit.reward.figures", after=("prepare_clip",)),
    Stage("direct", "03", "B", "kit.stages.sft_baseline:run_direct", "direct", "kit.eval.figures",
          after=("prepare_vlm",)),
    Stage("sft_baseline", "03", "B", "kit.stages.sft_baseline:run_sft_baseline", "sft_baseline", "kit.eval.figures",
          after=("direct",)),
    Stage("coda_direct", "03", "A", "kit.stages.coda:run_coda_direct", "coda_direct", after=("prepare_vlm",)),
    Stage("coda_sft", "03", "A", "kit.stages.coda:run_coda_sft", "coda_sft", after=("prepare_vlm",)),
    Stage("coda_sft_synth", "03", "A", "kit.stages.coda:run_coda_sft_synth", "coda_sft_synth",
          after=("synthesis",)),
    Stage("spin", "04", "A", "kit.stages.spin:run_spin_all", "spin", "kit.coda.rounds",
          after=("coda_sft", "coda_sft_synth")),
    Stage("rloo", "05", "B", "kit.stages.rloo:run_rloo", "rloo", "kit.rl.figures",
          after=("clip_finetune", "prepare_vlm")),
    Stage("action_sft", "06", "B", "kit.stages.action_sft:run_action_sft", "action_sft", "kit.rl.figures",
          after=("rloo",)),
    Stage("evaluate", "07", "B", "kit.report:run_evaluate", "evaluate", "kit.report", on_main=True,
          after=("clip_finetune", "sft_baseline", "action_sft")),
    Stage("coda_evaluate", "07", "A", "kit.stages.coda_evaluate:run_coda_evaluate", "evaluate", "kit.coda.figures",
          on_main=True, after=("coda_direct", "spin")),
)

# Each notebook's own folder: the runner marks the notebook done there (`<folder>/.stage.json`) and
# the manifest lists it under this name.
NOTEBOOKS: dict[str, str] = {"00": "prepare", "01": "synthesis", "02": "clip_finetune", "03": "sft_baseline",
                             "04": "spin", "05": "rloo", "06": "action_sft", "07": "evaluate"}


def stage(name: str) -> Stage:
    """The row of stage `name`; a KeyError naming the stages there are."""
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def of_notebook(notebook: str, tracks: Iterable[str] | None = None) -> list[Stage]:
    """The stages notebook `notebook` calls, in order; with `tracks`, only theirs and the shared ones."""
    keep = None if tracks is None else set(tracks)
    return [s for s in STAGES if s.notebook == notebook and (keep is None or s.track is None or s.track in keep)]


def notebooks_of_track(track: str) -> set[str]:
    """The notebooks a track needs: those with one of its stages or a shared one."""
    return {s.notebook for s in STAGES if s.track in (None, track)}


def folders() -> list[str]:
    """Every stage folder, in notebook order, once each."""
    return list(dict.fromkeys(s.folder for s in STAGES))


def figure_modules(folders_present: Sequence[str] | set[str]) -> list[str]:
    """The figure modules of the stages whose folders are in `folders_present`, in notebook order, once each."""
    present = set(folders_present)
    return list(dict.fromkeys(s.figures for s in STAGES if s.figures and s.folder in present))


def track_of_folder(folder: str) -> str | None:
    """The track whose stages write `folder` (None where both papers' stages do, or shared ones)."""
    tracks = {s.track for s in STAGES if s.folder == folder}
    return tracks.pop() if len(tracks) == 1 else None


def notebook_of_folder(folder: str) -> str | None:
    return next((s.notebook for s in STAGES if s.folder == folder), None)


def needs(name: str, among: Iterable[str]) -> list[str]:
    """The stages among `among` that stage `name` waits for (its `after`, the others being done before or
    not selected)."""
    keep = set(among)
    return [d for d in stage(name).after if d in keep]


def chain_lengths(names: Sequence[str]) -> dict[str, int]:
    """Per stage of `names`, the number of stages on the longest chain of `names` that waits on it (itself
    included): side by side, the longest chain starts first, since it decides when the last stage ends.

    >>> chain_lengths(["prepare_data", "prepare_clip", "clip_finetune", "direct"])
    {'prepare_data': 3, 'prepare_clip': 2, 'clip_finetune': 1, 'direct': 1}
    """
    below: dict[str, list[str]] = {n: [] for n in names}
    for n in names:
        for d in needs(n, names):
            below[d].append(n)
    memo: dict[str, int] = {}

    def length(n: str) -> int:
        if n not in memo:
            memo[n] = 1 + max((length(m) for m in below[n]), default=0)
        return memo[n]

    return {n: length(n) for n in names}
