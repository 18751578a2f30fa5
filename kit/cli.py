"""The `kit` command: run the notebooks (once, or swept over seeds and settings), check a run against its
profile's reference bands, check the machine before a long run (doctor), show and explain a profile, check
a dataset, score with the judge, redraw figures, copy the notebooks to step through in JupyterLab against a
run folder of your own.

Each command imports what it needs when it runs (the one place in kit that does so throughout), so that
`kit --help`, `kit verify` and `kit params` start without loading torch and the training stack."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kit import pipeline


def _cmd_run(a: argparse.Namespace) -> int:
    from kit.runner import RunInUse, StageFailed, run

    try:
        out = run(profile=a.profile, run_dir=a.run_dir, only=a.only.split(",") if a.only else None,
                  overrides=a.set, force=a.force, log_output=a.log_output, track=a.track,
                  launcher=a.launcher, config_file=a.config_file, jobs=a.jobs)
    except (StageFailed, RunInUse) as e:
        print(f"kit run: {e}", file=sys.stderr)
        return 1
    if a.report:  # what ran and what was skipped, for `kit sweep`
        from kit.runs import write_json

        write_json(a.report, out)
    print(f"run directory: {out['run_dir']}")
    return 0


def _ints(text: str | None, what: str) -> list[int]:
    try:
        return [int(x) for x in (text or "").split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"kit sweep {what} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def _cmd_sweep(a: argparse.Namespace) -> int:
    from kit.sweep import parse_grid, run_sweep, summarize

    if a.readme:  # render only: the README's results section from the bands file as it is
        from kit.reference import load_bands, update_readme

        bands = load_bands(a.readme)
        if bands is None:
            raise SystemExit(f"kit sweep --readme {a.readme}: no params/expected/{a.readme}.json; make it with --expected")
        print(f"README section rendered from params/expected/{a.readme}.json: {update_readme(bands)}")
        return 0
    if a.extend and not a.expected:
        raise SystemExit("kit sweep --extend: expected --expected too (it adds runs to the reference bands)")
    if a.other_machine and not a.extend:
        raise SystemExit("kit sweep --other-machine: expected --expected --extend too")
    if a.summarize:
        s = summarize(a.summarize, expected=a.expected, extend=a.extend, times=not a.no_times,
                      other_machine=a.other_machine)
    else:
        rec = run_sweep(a.profile, _ints(a.seeds, "--seeds"), parse_grid(a.grid),
                        only=a.only.split(",") if a.only else None, track=a.track, sweep_dir=a.sweep_dir,
                        jobs=a.jobs, base=a.set, threads=_ints(a.threads, "--threads"), expected=a.expected,
                        extend=a.extend, times=not a.no_times, other_machine=a.other_machine)
        s = rec["summary"]
    print((Path(s["sweep_dir"]) / "summary.md").read_text())
    if s.get("expected"):
        print(f"reference bands: {s['expected']}; README section rendered: {s['readme']}")
    return 1 if s["failed"] else 0


def _cmd_verify(a: argparse.Namespace) -> int:
    from kit.reference import expected_path, load_bands, verify, verify_table
    from kit.runs import read_json, resolve_run_dir

    rd = resolve_run_dir(a.run_dir)
    try:
        bands = load_bands("", a.bands) if a.bands else None
        if a.if_bands and bands is None:
            profile = ((read_json(rd / "manifest.json") or {}).get("profile")) or "?"
            if load_bands(profile) is None:
                print(f"kit verify: {expected_path(profile)}: no reference bands for profile '{profile}'; nothing to check")
                return 0
        res = verify(rd, bands)
    except (FileNotFoundError, ValueError) as e:
        print(f"kit verify: {e}", file=sys.stderr)
        return 2
    print(verify_table(res))
    if a.if_bands and not res["applies"]:
        return 0  # the run's own settings: no band applies, said in the notes
    return 0 if res["ok"] else 1


def _cmd_params_show(a: argparse.Namespace) -> int:
    from kit.params import dump, load_profile

    print(dump(load_profile(a.profile, a.set)), end="")
    return 0


def _cmd_params_explain(a: argparse.Namespace) -> int:
    from kit.params import explain, load_profile

    P = load_profile(a.profile, a.set)
    text = explain(a.keys, P)
    print(text)
    return 0


def _cmd_data_check(a: argparse.Namespace) -> int:
    from kit.data import DataError
    from kit.data.check import check_dataset

    try:
        summary = check_dataset(a.dataset, a.root, a.split)
    except (DataError, FileNotFoundError) as e:
        print(f"kit data check: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_figures(a: argparse.Namespace) -> int:
    from kit.data import DataError
    from kit.figures import figures_from_run
    from kit.runs import read_metrics, resolve_run_dir

    rd = resolve_run_dir(a.run_dir)
    if not (rd / "metrics.json").is_file():
        print(f"kit figures: {rd / 'metrics.json'}: not found; expected a run directory written by kit run",
              file=sys.stderr)
        return 1
    try:
        read_metrics(rd)  # a corrupt metrics.json is named here, whichever figure would read it first
        paths = figures_from_run(rd)
    except (DataError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"kit figures: {e}" + ("" if a.debug else " (--debug shows the traceback)"), file=sys.stderr)
        if a.debug:
            raise
        return 1
    for p in paths:
        print(p)
    print(f"{len(paths)} figures written", file=sys.stderr)
    return 0


def _cmd_stage(a: argparse.Namespace) -> int:
    from kit import dist
    from kit.data import DataError
    from kit.notebook import setup
    from kit.stages import run_stage, stage_function

    stage_function(a.name)  # an unknown name fails before anything loads
    P, rd = setup(a.profile, a.run_dir or f"runs/{a.profile}", a.set)
    try:
        run_stage(a.name, P, rd)
    except (DataError, FileNotFoundError) as e:  # e.g. an earlier stage not run yet, or a dataset not where it is said to be
        print(f"kit stage {a.name}: {e}" + ("" if a.debug else " (--debug shows the traceback)"), file=sys.stderr)
        if a.debug:
            raise
        return 1
    if dist.is_main():
        print(f"stage {a.name} done ({dist.num_processes()} process(es)); run directory: {rd}")
    dist.close()
    return 0


def _shown(path: str | os.PathLike) -> str:
    """A path as a user types it here: relative to the current folder when inside it."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _cmd_notebooks_copy(a: argparse.Namespace) -> int:
    from kit.params import ParamsError
    from kit.runner import CopyExists, copy_notebooks
    from kit.runs import resolve_run_dir

    try:
        out = copy_notebooks(a.run_dir, to=a.to, profile=a.profile, force=a.force)
    except ParamsError:
        raise  # main says it, as for every command
    except (CopyExists, ValueError) as e:
        print(f"kit notebooks copy: {e}", file=sys.stderr)
        return 1
    for p in out["written"]:
        print(f"wrote {_shown(p)}")
    profile = f"profile = {json.dumps(out['profile'])}" if out["profile"] else "profile as in notebooks/"
    print(f"their parameters: run_dir = {json.dumps(out['run_dir'])} ({resolve_run_dir(out['run_dir'])}), {profile}")
    if out["note"]:
        print(f"kit notebooks copy: note: {out['note']}", file=sys.stderr)
    jupyter = Path(sys.executable).parent / "jupyter"
    print(f"open them: {_shown(jupyter) if jupyter.exists() else 'jupyter'} lab {_shown(out['dest'])}")
    return 0


def _cmd_doctor(a: argparse.Namespace) -> int:
    from kit.doctor import blockers, doctor, table
    from kit.params import load_profile
    from kit.runs import resolve_run_dir

    P = load_profile(a.profile, a.set)  # a bad key: ParamsError, said by main as for every command
    rd = a.run_dir or f"runs/{P['profile']}"
    rows = doctor(P, rd, check_judge_endpoint=a.check_judge, progress=sys.stderr.isatty())
    print(f"kit doctor: profile {P['profile']}, run folder {_shown(resolve_run_dir(rd))}")
    print(table(rows))
    fixes = blockers(rows)
    if fixes:
        print(f"\n{len(fixes)} blocker(s), each with its fix:")
        print("\n".join(fixes))
        return 1
    warned = sum(r.status == "warn" for r in rows)
    print(f"\nno blockers{f' ({warned} warning(s) above)' if warned else ''}")
    return 0


def _user_cache(*parts: str) -> Path:
    """The user's own cache folder ($XDG_CACHE_HOME or ~/.cache), not one every user of the machine shares."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "kit", *parts)


def _cmd_judge_score(a: argparse.Namespace) -> int:
    from kit.data import DataError
    from kit.judge.factory import make_judge
    from kit.judge.score import score_folder

    cfg = {"backend": a.backend, "base_url": a.base_url, "model": a.model, "prompts_dir": a.prompts_dir,
           "cache_dir": a.cache, "concurrency": a.concurrency, "timeout": a.request_timeout,
           "deadline_s": a.deadline, "max_consecutive_failures": a.max_consecutive_failures}
    if a.backend == "openai" and not a.cache:
        cfg["cache_dir"] = str(_user_cache("judge"))
    try:
        judge = make_judge(cfg)
        summary = score_folder(a.pred_dir, a.reference, judge)
    except (DataError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"kit judge score: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f"; the answers had so far are cached in {cfg['cache_dir']}, a rerun asks only the rest" \
            if cfg.get("cache_dir") else ""
        print(f"\nkit judge score: interrupted{where}", file=sys.stderr)
        return 130
    print(json.dumps(summary, indent=2))
    if summary["coverage"] < 1:
        stopped = summary["judge"].get("stopped")
        print(f"kit judge score: coverage {summary['coverage']:.3f} < 1: {summary['judge']['failed_items']} item(s) "
              f"not judged{f' (the judge stopped: {stopped})' if stopped else ''}; their question ids are under "
              f"'failed' per task" + ("" if a.allow_partial else "; --allow-partial accepts a partial score"),
              file=sys.stderr)
        return 0 if a.allow_partial else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="kit", description=__doc__.split("\n\n")[0],
                                 epilog="`kit COMMAND --help` says more about each command.")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND", help="one of:")

    r = sub.add_parser("run", help="execute the notebooks in order with papermill")
    r.add_argument("--profile", default="tiny", help="profile name in params/ or a YAML path (default: tiny)")
    r.add_argument("--only", help="comma-separated notebook numbers, e.g. 00,03")
    r.add_argument("--track", choices=["A", "B"],
                   help="one paper's track: A (CODA-LM) or B (BDD-OIA): its notebooks and cells, its dataset only")
    r.add_argument("--run-dir", help="run directory (default: runs/<profile>)")
    r.add_argument("--force", action="store_true",
                   help="run notebooks again even if they finished with the same parameters (their stages still "
                        "reuse every result whose key is unchanged)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. sft.epochs=3")
    r.add_argument("--log-output", action="store_true", help="stream the notebooks' output (progress bars)")
    r.add_argument("--launcher", choices=["accelerate"],
                   help="run each notebook's stages under `accelerate launch` first (several GPUs, DeepSpeed)")
    r.add_argument("--config-file", help="the accelerate config for --launcher, e.g. params/accelerate/zero2.yaml")
    r.add_argument("--jobs", type=int, help="stage processes side by side, each with threads / jobs threads (default: "
                   "one per thread on a CPU, at most 4; 1 on a GPU): the stages first, then the notebooks find them")
    r.add_argument("--report", help=argparse.SUPPRESS)  # JSON of what ran and what was skipped (kit sweep)
    r.set_defaults(func=_cmd_run)

    sw = sub.add_parser("sweep", help="kit run over seeds and a grid of settings; the spread of every headline number")
    sw.add_argument("--profile", default="tiny", help="profile name in params/ or a YAML path (default: tiny)")
    sw.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a setting and its values, e.g. rloo.beta=0,0.02,0.05 (repeatable: the grid is their product)")
    sw.add_argument("--only", help="comma-separated notebook numbers, as kit run --only")
    sw.add_argument("--track", choices=["A", "B"], help="one paper's track, as kit run --track")
    sw.add_argument("--sweep-dir", help="where the run directories go (default: runs/sweeps/<profile>)")
    sw.add_argument("--jobs", type=int, default=1, help="combinations run side by side (threads per job: cores / jobs)")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override every combination shares")
    sw.add_argument("--threads", help="comma-separated thread counts (OMP_NUM_THREADS), each combination once per "
                    "count, e.g. 1,2; the runs of a count go side by side, cores / threads at a time")
    sw.add_argument("--summarize", metavar="SWEEP_DIR", help="rebuild summary.json/.md and the figures from files only")
    sw.add_argument("--expected", action="store_true",
                    help="write the profile's reference bands (params/expected/<profile>.json) and render the README's "
                         "results from them (no --grid/--set/--only/--track)")
    sw.add_argument("--extend", action="store_true",
                    help="with --expected: add this sweep's runs to the bands the file already holds (same parameters, "
                         "package versions and machine; at least one of its runs rerun here, which must give its "
                         "numbers to the digit, unless --other-machine)")
    sw.add_argument("--other-machine", action="store_true",
                    help="with --extend: the runs were made on another machine of the same kind, so a seed the bands "
                         "hold may give other numbers there; every run is added (nothing since the bands' commit may "
                         "change a number)")
    sw.add_argument("--no-times", action="store_true",
                    help="with --expected: leave the runs' times out of the bands (they shared the machine with other work)")
    sw.add_argument("--readme", metavar="PROFILE", help="only render the README's results section from "
                    "params/expected/PROFILE.json (after editing the README around it)")
    sw.set_defaults(func=_cmd_sweep)

    v = sub.add_parser("verify", help="a run's headline numbers against its profile's reference bands "
                                      "(exit 1 when one is outside or missing)")
    v.add_argument("run_dir", help="a run directory written by kit run, e.g. runs/tiny")
    v.add_argument("--bands", help="a bands file (default: params/expected/<the run's profile>.json)")
    v.add_argument("--if-bands", action="store_true",
                   help="exit 0 when the profile has no bands or the run's settings differ from the sweep's "
                        "(make run uses this)")
    v.set_defaults(func=_cmd_verify)

    p = sub.add_parser("params", help="show a resolved profile; explain its keys")
    psub = p.add_subparsers(dest="pcmd", required=True, metavar="SUBCOMMAND", help="one of:")
    ps = psub.add_parser("show", help="print the resolved profile (`kit params explain KEY` gives base.yaml's "
                                      "comment for a key)")
    ps.add_argument("profile", help="profile name in params/ or a YAML path, e.g. tiny")
    ps.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override, e.g. sft.epochs=3")
    ps.set_defaults(func=_cmd_params_show)
    pe = psub.add_parser("explain", help="what keys mean: base.yaml's comment and rule, the default and the profile's value")
    pe.add_argument("keys", nargs="+", metavar="KEY", help="dotted keys, e.g. rloo.beta, or a section, e.g. rloo")
    pe.add_argument("--profile", default="tiny", help="whose value to show (default: tiny)")
    pe.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override, e.g. sft.epochs=3")
    pe.set_defaults(func=_cmd_params_explain)

    d = sub.add_parser("data", help="check a dataset in its original layout")
    dsub = d.add_subparsers(dest="dcmd", required=True, metavar="SUBCOMMAND", help="one of:")
    dc = dsub.add_parser("check", help="validate a dataset in its original layout; print a JSON summary")
    dc.add_argument("dataset", choices=["bdd-oia", "coda-lm"], help="which dataset's layout to check")
    dc.add_argument("root", help="the dataset's folder, e.g. /data/BDD-OIA")
    dc.add_argument("--split", required=True, help="bdd-oia: train/val/test; coda-lm: Train/Val/Test/Mini")
    dc.set_defaults(func=_cmd_data_check)

    st = sub.add_parser("stage", help="run one stage function without its notebook (e.g. under accelerate launch)")
    st.add_argument("name", help="the stage: " + ", ".join(s.name for s in pipeline.STAGES))
    st.add_argument("--profile", default="tiny", help="profile name in params/ or a YAML path (default: tiny)")
    st.add_argument("--run-dir", help="run directory (default: runs/<profile>)")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override, e.g. sft.epochs=3")
    st.add_argument("--debug", action="store_true", help="show the traceback of an error")
    st.set_defaults(func=_cmd_stage)

    j = sub.add_parser("judge", help="score CODA-LM answers with the judge")
    jsub = j.add_subparsers(dest="jcmd", required=True, metavar="SUBCOMMAND", help="one of:")
    js = jsub.add_parser("score", help="score a CODA-LM submission folder; print a JSON summary per task")
    js.add_argument("pred_dir", help="folder with {general_perception,region_perception,driving_suggestion}_answer.jsonl")
    js.add_argument("--reference", required=True, help="the CODA-LM JSON folder answered, e.g. CODA-LM/Mini")
    js.add_argument("--backend", default="rubric", choices=["rubric", "openai"],
                    help="rubric: the offline stand-in (no model) | openai: any OpenAI-compatible endpoint")
    js.add_argument("--base-url", help="openai: an OpenAI-compatible endpoint (key from $OPENAI_API_KEY)")
    js.add_argument("--model", help="openai: the judge model")
    js.add_argument("--prompts-dir", help="a folder of your own prompt files (see kit/judge/prompts.py)")
    js.add_argument("--cache", help="the judge's answer cache (default: ~/.cache/kit/judge, or $XDG_CACHE_HOME/kit/judge)")
    js.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default: 8)")
    js.add_argument("--request-timeout", type=float, default=60, metavar="S", help="seconds per request (default: 60)")
    js.add_argument("--deadline", type=float, metavar="S",
                    help="seconds for the whole scoring: then the judge stops, keeps what it judged and says so")
    js.add_argument("--max-consecutive-failures", type=int, default=20, metavar="N",
                    help="stop after N failed requests in a row (timeouts, 5xx, answers without a rating; default: 20)")
    js.add_argument("--allow-partial", action="store_true",
                    help="exit 0 when some items could not be judged (default: exit 1 whenever coverage < 1)")
    js.set_defaults(func=_cmd_judge_score)

    f = sub.add_parser("figures", help="regenerate every figure of a run from its files (no training)")
    f.add_argument("run_dir", help="a run directory written by kit run, e.g. runs/tiny")
    f.add_argument("--debug", action="store_true", help="show the traceback of an error")
    f.set_defaults(func=_cmd_figures)

    dr = sub.add_parser("doctor", help="before a long run: torch, GPU, bitsandbytes, models, data, disk, GPU memory "
                                       "and judge in one table (exit 1 when something blocks the run)")
    dr.add_argument("--profile", default="tiny", help="profile name in params/ or a YAML path (default: tiny)")
    dr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override, e.g. device=cuda")
    dr.add_argument("--run-dir", help="the run folder the run will use, for its disk space (default: runs/<profile>)")
    dr.add_argument("--check-judge", action="store_true",
                    help="send one small request to the openai judge's endpoint (default: only check its settings and key)")
    dr.set_defaults(func=_cmd_doctor)

    n = sub.add_parser("notebooks", help="the numbered notebooks, for stepping through in JupyterLab")
    nsub = n.add_subparsers(dest="ncmd", required=True, metavar="SUBCOMMAND", help="one of:")
    nc = nsub.add_parser("copy", help="copy the notebooks, their parameters cell pointed at a run folder of your own "
                                      "(so stepping through leaves make run's runs/tiny as it is)")
    nc.add_argument("run_dir", help="the run folder the copies read and write, e.g. runs/mine (relative to the "
                                    "project root; a finished one is reused, stage by stage, where the keys match)")
    nc.add_argument("--to", metavar="FOLDER", help="where the copies go (default: my-notebooks/<the run folder's "
                                                  "name>; relative to the project root)")
    nc.add_argument("--profile", metavar="P", help="set the copies' profile too: a name in params/ or a YAML path "
                                                  "(default: the notebooks' own, tiny)")
    nc.add_argument("--force", action="store_true", help="overwrite copies already there (your edits in them are lost)")
    nc.set_defaults(func=_cmd_notebooks_copy)
    _describe(ap)
    return ap


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's --help opens with the line `kit --help` gives it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None:
                    sub.description = helps.get(name)
                _describe(sub)


def main(argv: list[str] | None = None) -> int:
    from kit import quiet
    from kit.params import ParamsError

    quiet.known_messages()  # before any command imports the training stack

    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except ParamsError as e:
        print(f"kit: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
