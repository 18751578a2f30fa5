"""`kit run`: execute the numbered notebooks in order with papermill into the run directory.

Each notebook gets three parameters (profile, run_dir, overrides) and does the rest itself; the
runner only orders, skips, times and records. A stage is skipped on a rerun when it finished
before with the same resolved parameters (its marker `<stage>/.stage.json` holds their hash).

Stages side by side (`--jobs`, on a CPU by default one per core up to four): the notebooks' stages
first run in `--jobs` worker processes (each runs stage after stage as `kit stage NAME` would), each
with its share of the threads, a stage once the stages it reads are done (the stage table's `after`), so that
Track A and Track B use both cores; each notebook executes as soon as its stages are done and finds
their results under the same keys. The numbers are those of the stage processes: every stage runs
with `threads / jobs` threads, whichever finishes first (`OMP_NUM_THREADS=1 kit run --jobs 1` gives
the same numbers as `kit run --jobs 2` on two cores).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib.metadata as md
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping

from kit import dist, pipeline, runs
from kit import params as kparams
from kit.lockfile import lock_status
from kit.params import PROJECT_ROOT

NOTEBOOKS_DIR = PROJECT_ROOT / "notebooks"
TRACKED_PACKAGES = ["kit", "torch", "torchvision", "transformers", "trl", "peft", "accelerate", "bitsandbytes",
                    "open_clip_torch", "segment-anything", "scikit-learn", "papermill", "datasets", "numpy"]


class StageFailed(RuntimeError):
    pass


def list_notebooks(only: Iterable[str] | None = None, tracks: Iterable[str] = ("A", "B")) -> list[Path]:
    wanted_tracks = set(tracks)
    unknown = wanted_tracks - set(pipeline.TRACKS)
    if unknown:
        raise SystemExit(f"tracks {sorted(unknown)}: no such track; expected some of {sorted(pipeline.TRACKS)}")
    # 00, 03 and 07 serve both tracks: their cells tagged `track-A` or `track-B` run only for that track
    in_tracks = set().union(*(pipeline.notebooks_of_track(t) for t in wanted_tracks))
    nbs = [nb for nb in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")) if nb.name[:2] in in_tracks]
    if only:
        wanted = {s.strip().zfill(2) for s in only if s.strip()}
        unknown = wanted - {nb.name[:2] for nb in nbs}
        if unknown:
            raise SystemExit(f"--only {','.join(sorted(unknown))}: no such notebook in {NOTEBOOKS_DIR} "
                             f"(have {', '.join(nb.name[:2] for nb in nbs)})")
        nbs = [nb for nb in nbs if nb.name[:2] in wanted]
    return nbs


def for_tracks(nb: Path, tracks: Iterable[str], out: Path) -> Path:
    """The notebook without the cells tagged for tracks that are not selected (written to `out`);
    the notebook itself when nothing is left out."""
    import nbformat

    skip = {f"track-{t}" for t in pipeline.TRACKS if t not in set(tracks)}
    doc = nbformat.read(nb, as_version=4)
    kept = [c for c in doc.cells if not skip & set(c.get("metadata", {}).get("tags", []))]
    if len(kept) == len(doc.cells):
        return nb
    doc.cells = kept
    out.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(out, nbformat.writes(doc))
    return out


def stage_of(nb: Path) -> str:
    return pipeline.NOTEBOOKS.get(nb.name[:2], nb.stem[3:])


def git_commit() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain"))}
    except OSError:
        return {"commit": None, "dirty": None}


def package_versions() -> dict:
    out = {}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["python"] = sys.version.split()[0]
    return out


def machine() -> dict:
    """What the numbers of a run may depend on beyond its parameters and packages: the CPU and the
    threads its BLAS and OpenMP pools use (torch's default: one per core). Where Linux says, the CPU's
    generation and vector units too (`cpu_id`): two CPUs of one name (a cloud's "AMD EPYC") may be of
    different generations, whose kernels round the same sums differently."""
    import platform

    cpu, cpu_id = platform.processor() or platform.machine(), None
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]  # the first core's block
        info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in first.splitlines() if ":" in ln)}
        cpu = info.get("model name", cpu)
        units = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in info.get("flags", "").split()]
        cpu_id = (f"family {info.get('cpu family')} model {info.get('model')} stepping {info.get('stepping')}: "
                  + " ".join(units))
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS") or "default (one per core)",
            "platform": platform.platform(), **({"cpu_id": cpu_id} if cpu_id else {})}


def _stage_hash(P: Mapping) -> str:
    # The runner's own settings do not change what a stage computes.
    return kparams.params_hash({k: v for k, v in P.items() if k != "runner"})


def is_done(run_dir: Path, stage: str, phash: str, executed: Path) -> bool:
    marker = runs.read_json(run_dir / stage / ".stage.json", None)
    return bool(marker and marker.get("status") == "ok" and marker.get("params_hash") == phash
                and executed.exists())


def _failure_message(nb: Path, executed: Path, err: Exception) -> str:
    cell = getattr(err, "exec_count", None) or getattr(err, "cell_index", None)
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    return (f"notebook {nb.name} failed in cell {cell}: {ename}: {evalue}\n"
            f"  the executed notebook, with the traceback, is {executed}")


def _launch_config(config_file: str | os.PathLike) -> dict:
    import yaml

    path = Path(config_file)
    if not path.is_file():
        raise SystemExit(f"kit run --config-file {path}: no such file; expected an accelerate config "
                         f"(e.g. params/accelerate/multi_gpu.yaml)")
    return yaml.safe_load(path.read_text()) or {}


def launched_processes(config_file: str | os.PathLike) -> int:
    """The number of processes an accelerate config file launches (its num_processes)."""
    path, cfg = Path(config_file), _launch_config(config_file)
    if not isinstance(cfg.get("num_processes", 1), int) or int(cfg.get("num_processes", 1)) < 1:
        raise SystemExit(f"{path}: num_processes: expected a positive integer, got {cfg.get('num_processes')!r}")
    return int(cfg.get("num_processes", 1))


def launch_stages(nb: Path, P: Mapping, profile: str, rd: Path, over: Mapping, config_file: str) -> list[str]:
    """The notebook's stages, each as `accelerate launch --config_file F -m kit.cli stage NAME`; the
    notebook then runs as usual in one process and finds their results under the same keys."""
    import json

    names = [s.name for s in pipeline.of_notebook(nb.name[:2], P["tracks"])]
    sets = [f"--set={k}={json.dumps(v)}" for k, v in over.items()]
    cfg = _launch_config(config_file)
    for name in names:
        # one machine and no port in the config: a free one, not torchrun's default that another run may hold
        port = ["--main_process_port", str(dist.free_port())] if (
            int(cfg.get("num_machines", 1) or 1) == 1 and not cfg.get("main_process_port")) else []
        print(f"  accelerate launch --config_file {config_file} -m kit.cli stage {name}", flush=True)
        done = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                               *port, "-m", "kit.cli", "stage", name, "--profile", profile, "--run-dir", str(rd), *sets],
                              cwd=str(kparams.PROJECT_ROOT))
        if done.returncode != 0:
            raise StageFailed(f"notebook {nb.name}: stage {name} under accelerate launch --config_file {config_file} "
                              f"failed (exit {done.returncode}); its processes' tracebacks are printed above")
    return names


AUTO_JOBS = 4  # `kit run` on a CPU: one stage process per core, at most this many (the stage graph is rarely wider)


def threads_available() -> int:
    """The threads this process may use: OMP_NUM_THREADS where set, else the cores it may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def side_by_side(P: Mapping, jobs: int | None, launcher: str | None) -> tuple[int, int]:
    """(stage processes side by side, threads each) for `kit run --jobs` (None: one per thread on a CPU,
    at most AUTO_JOBS; one on a GPU, whose memory one training fills, and under accelerate launch)."""
    threads = threads_available()
    if jobs is not None and jobs < 1:
        raise SystemExit(f"kit run --jobs {jobs}: expected a positive number of stage processes")
    if launcher:
        if jobs not in (None, 1):
            raise SystemExit("kit run --jobs with --launcher accelerate: the launched processes share the GPUs; "
                             "leave --jobs out")
        return 1, threads
    if jobs is None:
        from kit.models.device import model_spec

        jobs = min(threads, AUTO_JOBS) if model_spec(P).device.type == "cpu" else 1
    return jobs, max(1, threads // jobs)


def _worker_start(threads: int) -> None:
    """A stage worker's first step: its threads, and its end with the runner's (a `kill -9` of kit run
    must not leave a worker training into the run folder)."""
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the run lock and Ctrl-C still stop it with the runner
        pass
    import torch

    torch.set_num_threads(threads)


def _stage_in_worker(name: str, profile: str, run_dir: str, over: Mapping, log: str) -> None:
    """Stage `name` in this worker as `kit stage NAME` runs it (setup, then the stage), its output into
    `log`. A failure comes back as a RuntimeError naming the exception (the traceback is in the log)."""
    import traceback

    from kit.notebook import setup
    from kit.stages import run_stage

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:  # the file descriptors, so that tqdm, warnings and C libraries write there too
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            P, rd = setup(profile, run_dir, over)
            run_stage(name, P, rd)
            print(f"stage {name} done", flush=True)
        except BaseException as e:
            traceback.print_exc()
            sys.stderr.flush()
            raise RuntimeError(f"{type(e).__name__}: {e}".splitlines()[0][:300]) from None
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


class StagePool:
    """The stages `names` in `jobs` worker processes with `threads` threads each (each worker imports
    the training stack once and runs stage after stage as `kit stage NAME` would), every stage once the
    stages it reads are done (pipeline.needs), the longest chain first (pipeline.chain_lengths).
    `wait_for(names)` returns when those are done, and raises StageFailed once any stage failed. A
    stage's output goes to `<run>/logs/stage_<name>.log`."""

    def __init__(self, names: list[str], *, jobs: int, threads: int, profile: str, rd: Path, over: Mapping):
        self.names, self.jobs, self.threads = names, jobs, threads
        self.profile, self.rd, self.over = profile, rd, dict(over)
        self.status = {n: "waiting" for n in names}
        self.seconds: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self._cond = threading.Condition()
        self._interrupted = False
        self._thread = threading.Thread(target=self._loop, name="kit-stages", daemon=True)

    def log(self, name: str) -> Path:
        return self.rd / "logs" / f"stage_{name}.log"

    def start(self) -> "StagePool":
        (self.rd / "logs").mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        import multiprocessing as mp

        from tqdm.auto import tqdm

        length = pipeline.chain_lengths(self.names)
        row = {n: i for i, n in enumerate(self.names)}
        started: dict[str, float] = {}
        running: dict[str, object] = {}
        bar = tqdm(total=len(self.names), desc=f"stages, {self.jobs} side by side", unit="stage")
        # spawn: fresh interpreters (no fork of a process that holds threads), started from this thread,
        # whose end is what the workers' PR_SET_PDEATHSIG watches
        pool = mp.get_context("spawn").Pool(self.jobs, initializer=_worker_start, initargs=(self.threads,))
        try:
            while not self._interrupted:
                with self._cond:
                    stop = "failed" in self.status.values()
                    ready = sorted((n for n, st in self.status.items() if st == "waiting"
                                    and all(self.status[d] == "ok" for d in pipeline.needs(n, self.names))),
                                   key=lambda n: (-length[n], row[n]))
                    for n in ([] if stop else ready[:self.jobs - len(running)]):
                        running[n] = pool.apply_async(
                            _stage_in_worker, (n, self.profile, str(self.rd), self.over, str(self.log(n))))
                        started[n], self.status[n] = time.time(), "running"
                    if not running and (stop or not ready):
                        break
                if ", ".join(running) != bar.postfix:
                    bar.set_postfix_str(", ".join(running))
                elif time.time() - bar.last_print_t > 10:  # the elapsed time moves while a stage runs
                    bar.refresh()
                for n, res in list(running.items()):
                    if not res.ready():
                        continue
                    try:
                        res.get()
                        err = None
                    except Exception as e:  # the stage's own failure (its traceback is in its log)
                        err = str(e)
                    with self._cond:
                        del running[n]
                        self.seconds[n] = round(time.time() - started[n], 1)
                        self.status[n] = "ok" if err is None else "failed"
                        if err is not None:
                            self.errors[n] = err
                        self._cond.notify_all()
                    bar.update(1)
                time.sleep(0.2)
        finally:
            bar.close()
            if self._interrupted:  # Ctrl-C: the workers stop now (a stopped training resumes next time)
                pool.terminate()
            else:
                pool.close()
            pool.join()
            with self._cond:
                for n, st in self.status.items():
                    if st in ("waiting", "running"):
                        self.status[n] = "not run" if st == "waiting" else "stopped"
                self._cond.notify_all()

    def _failure(self) -> StageFailed | None:
        failed = [n for n, st in self.status.items() if st == "failed"]
        if not failed:
            return None
        n = failed[0]
        return StageFailed(f"stage {n} failed in its worker process: {self.errors[n]}\n"
                           f"  its output, with the traceback, is {self.log(n)}")

    def wait_for(self, names: Iterable[str]) -> None:
        """Until the stages `names` are done; StageFailed once any stage of the pool failed."""
        wanted = [n for n in names if n in self.status]
        with self._cond:
            while True:
                err = self._failure()
                if err:
                    raise err
                if all(self.status[n] == "ok" for n in wanted):
                    return
                if any(self.status[n] in ("not run", "stopped") for n in wanted):
                    raise StageFailed(f"stages {', '.join(n for n in wanted if self.status[n] != 'ok')} "
                                      "did not finish: the run was stopped")
                self._cond.wait(timeout=1.0)

    def close(self, interrupted: bool = False) -> None:
        """Start nothing more; the running stages are let finish (their results are kept under their keys),
        or, after Ctrl-C, stopped (a stopped training resumes from its last checkpoint next time)."""
        with self._cond:
            self._interrupted = interrupted
            running = [n for n, st in self.status.items() if st == "running"]
            for n, st in self.status.items():  # nothing more starts
                if st == "waiting":
                    self.status[n] = "not run"
        if running and not interrupted:
            print(f"kit run: waiting for {', '.join(running)} to finish (results kept)", file=sys.stderr, flush=True)
        if self._thread.is_alive():
            self._thread.join()

    def record(self) -> dict:
        return {"jobs": self.jobs, "threads_per_stage": self.threads,
                "stages": {n: {"status": self.status[n], "seconds": self.seconds.get(n), "log": str(self.log(n)),
                               **({"error": self.errors[n]} if n in self.errors else {})} for n in self.names}}


def run(profile: str = "tiny", run_dir: str | None = None, only: Iterable[str] | None = None,
        overrides: list[str] | Mapping | None = None, force: bool = False, log_output: bool = False,
        track: str | None = None, launcher: str | None = None, config_file: str | None = None,
        jobs: int | None = None) -> dict:
    """The notebooks in order (papermill) into the run directory. With `jobs` > 1 (None: side_by_side's
    choice), their stages first run side by side in worker processes (StagePool) and each notebook
    waits for its own. With `launcher="accelerate"`, each notebook's stages first run under `accelerate
    launch --config_file config_file` (several GPUs, DeepSpeed); the notebook then reuses their results
    (the kernel is told how many processes made them: kit.dist.KEY_PROCESSES) and draws its tables and
    figures."""
    if launcher not in (None, "accelerate"):
        raise SystemExit(f"kit run --launcher {launcher}: expected accelerate")
    if launcher and not config_file:
        raise SystemExit("kit run --launcher accelerate needs --config-file (e.g. params/accelerate/multi_gpu.yaml)")
    n_proc = launched_processes(config_file) if launcher else None

    if track is not None:  # one paper's track: its notebooks, its cells, its dataset only
        overrides = {**kparams.parse_overrides(overrides), "tracks": [track]}
    P = kparams.load_profile(profile, overrides)  # fail fast on a bad profile, before any notebook starts
    # notebooks run in notebooks/: hand them a profile path that does not depend on our cwd
    ppath = kparams.find_profile(profile)
    nb_profile = P["profile"] if ppath.parent == kparams.PARAMS_DIR else str(ppath)
    rd = runs.resolve_run_dir(run_dir or f"runs/{P['profile']}")
    nbs = list_notebooks(only, P["tracks"])
    # a notebook done by another number of processes is not done: its results differ
    phash = _stage_hash({**P, "processes": n_proc} if n_proc and n_proc > 1 else P)
    over = kparams.parse_overrides(overrides)
    if not force and nbs and all(is_done(rd, stage_of(nb), phash, rd / "notebooks" / nb.name) for nb in nbs):
        # nothing to do: nothing is written either (a finished run folder may be read-only, or in use)
        for i, nb in enumerate(nbs, 1):
            print(f"[{i}/{len(nbs)}] {nb.name}: done before with the same parameters, skipped (--force reruns it)")
        return {"run_dir": str(rd), "stages": {stage_of(nb): "skipped" for nb in nbs}}
    (runs.ensure_run_dir(rd) / "notebooks").mkdir(exist_ok=True)
    n_jobs, threads = side_by_side(P, jobs, launcher)
    with run_lock(rd):
        todo = [nb for nb in nbs if force or not is_done(rd, stage_of(nb), phash, rd / "notebooks" / nb.name)]
        names = [s.name for nb in todo for s in pipeline.of_notebook(nb.name[:2], P["tracks"])]
        pool = StagePool(names, jobs=n_jobs, threads=threads, profile=nb_profile, rd=rd,
                         over=over) if n_jobs > 1 and len(names) > 1 else None
        return _run(nbs, P, rd, phash, over, nb_profile, force, log_output, launcher, config_file, n_proc, pool)


class RunInUse(RuntimeError):
    """Another `kit run` holds the run folder."""


@contextlib.contextmanager
def run_lock(rd: Path):
    """One `kit run` at a time per run folder: a second one stops at once, naming the holder's pid (two
    would train into the same checkpoints). The lock is the OS's (flock): a killed holder frees it."""
    path = rd / ".kit-run.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RunInUse(f"{rd}: another kit run (pid {holder}) is running in this run folder; wait for it, "
                           "or give this one another --run-dir") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(nbs, P, rd, phash, over, nb_profile, force, log_output, launcher, config_file, n_proc, pool) -> dict:
    manifest_path = rd / "manifest.json"
    runs.forget_json(manifest_path, ["overrides", "finished"])  # this run's, not merged with an earlier run's
    git = git_commit()
    runs.update_json(manifest_path, {
        "profile": P["profile"], "params": P, "params_hash": phash, "seed": P["seed"],
        "git": git, "packages": package_versions(), "lock": lock_status(), "machine": machine(),
        "overrides": over, "side_by_side": None,
        "started": _dt.datetime.now().isoformat(timespec="seconds"),
    })
    summary = {}
    before = os.environ.get(dist.KEY_PROCESSES)
    if n_proc:  # the notebooks' kernels (papermill starts them with our environment) key as the launch did
        os.environ[dist.KEY_PROCESSES] = str(n_proc)
    interrupted = False
    try:
        if pool:
            pool.start()
        _run_notebooks(nbs, P, rd, phash, over, nb_profile, force, log_output, launcher, config_file, summary,
                       git["commit"], pool)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        if pool:
            pool.close(interrupted)
            runs.update_json(manifest_path, {"side_by_side": pool.record()})
        if n_proc:
            os.environ.pop(dist.KEY_PROCESSES, None)
            if before is not None:
                os.environ[dist.KEY_PROCESSES] = before
    runs.update_json(manifest_path, {"finished": _dt.datetime.now().isoformat(timespec="seconds")})
    return {"run_dir": str(rd), "stages": summary}


def _run_notebooks(nbs, P, rd, phash, over, nb_profile, force, log_output, launcher, config_file, summary,
                   commit: str | None, pool: StagePool | None = None) -> None:
    """Each notebook in turn (with a pool, once its stages are done there); `commit` is recorded per stage
    (a resumed run's notebooks may have run at other commits)."""
    import papermill as pm

    manifest_path = rd / "manifest.json"
    for i, nb in enumerate(nbs, 1):
        stage = stage_of(nb)
        executed = rd / "notebooks" / nb.name
        head = f"[{i}/{len(nbs)}] {nb.name}"
        if not force and is_done(rd, stage, phash, executed):
            print(f"{head}: done before with the same parameters, skipped (--force reruns it)", flush=True)
            summary[stage] = "skipped"
            continue
        print(f"{head} -> {executed}", flush=True)
        runs.update_json(manifest_path, {"stages": {stage: {"status": "running", "notebook": str(executed),
                                                            "seconds": None}}})
        # not done until it finishes: a kill -9 or Ctrl-C from here on leaves the notebook to run again
        runs.write_json(rd / stage / ".stage.json", {"status": "running", "params_hash": None})
        # executed into a side file, so the last finished copy stays until this one finishes
        running = rd / "notebooks" / ".running" / nb.name
        running.parent.mkdir(parents=True, exist_ok=True)
        t0 = waited = time.time()
        try:
            if pool:  # its stages side by side first: their results are what the notebook then finds
                pool.wait_for(s.name for s in pipeline.of_notebook(nb.name[:2], P["tracks"]))
                waited = time.time()
            if launcher:
                launch_stages(nb, P, nb_profile, rd, over, config_file)
            source = for_tracks(nb, P["tracks"], rd / "notebooks" / ".source" / nb.name)
            pm.execute_notebook(
                str(source), str(running), parameters={"profile": nb_profile, "run_dir": str(rd), "overrides": over},
                cwd=str(NOTEBOOKS_DIR), kernel_name="python3", progress_bar=True, log_output=log_output,
                execution_timeout=int(P["runner"]["execution_timeout"]),
            )
        except BaseException as err:  # papermill raises PapermillExecutionError; Ctrl-C is KeyboardInterrupt
            secs = round(time.time() - t0, 1)
            status = "failed" if isinstance(err, Exception) else "interrupted"
            failed = executed.with_name(f"{executed.stem}.{status}.ipynb")
            if running.exists():
                os.replace(running, failed)
            runs.update_json(manifest_path, {"stages": {stage: {"status": status, "seconds": secs, "notebook": str(failed)}}})
            runs.write_json(rd / stage / ".stage.json", {"status": status, "params_hash": phash})
            if status == "interrupted":
                raise
            raise (err if isinstance(err, StageFailed) else StageFailed(_failure_message(nb, failed, err))) from None
        os.replace(running, executed)
        secs = round(time.time() - t0, 1)
        # with a pool, `seconds` counts from the notebook's turn; `executed_seconds` from its stages' end
        runs.update_json(manifest_path, {"stages": {stage: {"status": "ok", "seconds": secs, "notebook": str(executed),
                                                            "executed_seconds": round(time.time() - waited, 1),
                                                            "commit": commit}}})
        runs.write_json(rd / stage / ".stage.json", {"status": "ok", "params_hash": phash, "seconds": secs,
                                                     "notebook": str(executed)})
        print(f"{head}: ok in {secs:.0f} s", flush=True)
        summary[stage] = "ok"


# `kit notebooks copy`: the numbered notebooks, for a student to step through in JupyterLab against a run
# folder of their own (the notebooks themselves stay pointed at runs/tiny, where `make run` writes).

COPIES_DIR = PROJECT_ROOT / "my-notebooks"  # in .gitignore


class CopyExists(FileExistsError):
    """A copy is there already (it may hold a student's work)."""


def parameters_cell(doc: Mapping) -> dict:
    """The notebook's cell tagged `parameters` (the one papermill replaces), as a JSON dict."""
    for cell in doc.get("cells", []):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    raise ValueError("no cell tagged 'parameters'")


def set_parameters(source: str, values: Mapping[str, str]) -> str:
    """`source` (a parameters cell: one `name = literal  # comment` per line) with the literal of each
    name in `values` replaced by that string; everything else, comments included, as it was (a comment
    keeps its column where the new literal leaves room).

    >>> print(set_parameters('run_dir = "runs/tiny"   # relative to the project root', {"run_dir": "runs/mine"}))
    run_dir = "runs/mine"   # relative to the project root
    """
    import ast
    import json
    import re

    found = {}
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in values):
            if node.value.lineno != node.value.end_lineno:
                raise ValueError(f"parameters cell: {node.targets[0].id} spans several lines; expected one literal")
            found[node.targets[0].id] = node.value
    missing = [k for k in values if k not in found]
    if missing:
        raise ValueError(f"parameters cell: no assignment to {', '.join(missing)}")
    lines = source.splitlines(keepends=True)
    for name, node in sorted(found.items(), key=lambda kv: -kv[1].lineno):
        raw = lines[node.lineno - 1].encode()  # ast's columns count UTF-8 bytes
        head, old, rest = (raw[:node.col_offset].decode(), raw[node.col_offset:node.end_col_offset].decode(),
                           raw[node.end_col_offset:].decode())
        new = json.dumps(str(values[name]), ensure_ascii=False)  # a JSON string is a Python string literal
        if ast.literal_eval(new) != str(values[name]):
            raise ValueError(f"parameters cell: cannot write {values[name]!r} as a literal")
        gap, comment = re.match(r"([ \t]*)(.*)", rest, re.S).groups()
        if comment.startswith("#"):
            gap = " " * max(min(2, len(gap)), len(gap) + len(old) - len(new))
        lines[node.lineno - 1] = head + new + gap + comment
    return "".join(lines)


def copy_notebooks(run_dir: str | os.PathLike, to: str | os.PathLike | None = None, profile: str | None = None,
                   force: bool = False) -> dict:
    """Copies of the numbered notebooks whose parameters cell has `run_dir` (and `profile`, when given) set,
    into `to` (default: my-notebooks/<the run folder's name>/; relative paths from the project root, as
    run folders). Each copy is otherwise the notebook as it is (cell ids, tags, outputs, markdown). An
    existing copy is overwritten only with `force`: CopyExists names it otherwise, and nothing is written.

    Returns {"dest", "written" (paths), "run_dir", "profile" (the literals written; profile None when
    the notebooks' own stays), "note" (None, or why the copies will not find the run's results)}."""
    import ast
    import json

    rd = runs.resolve_run_dir(run_dir)
    if not rd.name:
        raise ValueError(f"run folder {str(run_dir)!r}: expected a folder with a name, e.g. runs/mine")
    dest = runs.resolve_run_dir(to) if to else COPIES_DIR / rd.name
    if dest == NOTEBOOKS_DIR.resolve():
        raise ValueError(f"{dest}: the kit's own notebooks; copy them elsewhere (--to)")
    values = {"run_dir": str(Path(run_dir))}
    if profile:
        kparams.load_profile(profile)  # a ParamsError names the profile and the known ones
        ppath = kparams.find_profile(profile)
        # as kit run hands it to the notebooks: a name in params/, or the file's full path (any folder)
        values["profile"] = ppath.stem if ppath.parent == kparams.PARAMS_DIR else str(ppath)
    nbs = list_notebooks()
    targets = [dest / nb.name for nb in nbs]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CopyExists(f"{existing[0]} exists{more}, perhaps with your work in it; --force overwrites "
                         f"(or --to another folder)")
    docs = []
    for nb in nbs:
        doc = json.loads(nb.read_text())
        try:
            cell = parameters_cell(doc)
            src = cell["source"]
            text = set_parameters("".join(src) if isinstance(src, list) else src, values)
        except ValueError as e:
            raise ValueError(f"{nb}: {e}") from None
        cell["source"] = text.splitlines(keepends=True) if isinstance(src, list) else text
        docs.append(doc)
    written = []
    for doc, target in zip(docs, targets):
        # nbformat's own layout (indent 1, unescaped text, a final newline): a copy differs from its
        # notebook in the parameters cell only
        written.append(runs.atomic_write_text(target, json.dumps(doc, indent=1, ensure_ascii=False) + "\n"))

    # a run folder made with other settings: its results are under other keys
    note = None
    made = runs.read_json(rd / "manifest.json") if (rd / "manifest.json").is_file() else None
    if made:
        cell_src = parameters_cell(docs[0])["source"]
        lits = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse("".join(cell_src)).body
                if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)}
        p_copy = Path(str(lits.get("profile", "tiny"))).stem
        over = kparams.parse_overrides(lits.get("overrides") or {})
        if made.get("profile") != p_copy or (made.get("overrides") or {}) != over:
            note = (f"{rd} was made with profile {made.get('profile')!r} and overrides "
                    f"{json.dumps(made.get('overrides') or {})}; the copies have profile {p_copy!r} and overrides "
                    f"{json.dumps(over)}: a stage whose settings differ will not find its results under its key and will "
                    f"train afresh (--profile, or the overrides in the parameters cell, make them match)")
    return {"dest": dest, "written": written, "run_dir": values["run_dir"], "profile": values.get("profile"),
            "note": note}
