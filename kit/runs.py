"""The run directory contract: manifest.json, metrics.json, one folder per stage.

Every write here is atomic (write a temp file in the same folder, then os.replace), and
metrics.json is merged under a file lock, so a crash or two stages finishing together never
leaves a half-written or clobbered file.

A run folder can be copied, moved or handed out: every JSON and JSONL file written here inside a run
folder stores the paths that lie inside that folder as `<run>/...`, and the readers here turn them
back into paths under the folder the file is in now (`portable`, `local`). Nothing a moved or copied
run reads points back at where it was made; paths outside it (a user's data root) stay as given.

Under `accelerate launch` with several processes (kit.dist) every process computes the same values
and only the main one writes them: the writers here return without writing on the others, unless
told `every_rank=True` (a process's own partial results). metrics.json's writers are a barrier too,
so every process reads what the main one recorded.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from kit import dist, pipeline
from kit.params import PROJECT_ROOT


def resolve_run_dir(run_dir: str | os.PathLike) -> Path:
    """Relative run dirs are relative to the project root, so a notebook run from notebooks/
    (JupyterLab, nbmake) and `kit run` from the root write to the same place."""
    p = Path(run_dir).expanduser()
    return (p if p.is_absolute() else PROJECT_ROOT / p).resolve()


RUN_MARK = ".kit-run"      # an empty file that marks a run folder's top (the files in it are the run's)
RUN_TOKEN = "<run>"         # how a path inside the run folder is written in its JSON files


def ensure_run_dir(run_dir: str | os.PathLike) -> Path:
    """The run folder, created and marked as one."""
    rd = resolve_run_dir(run_dir)
    rd.mkdir(parents=True, exist_ok=True)
    if not (rd / RUN_MARK).exists():
        (rd / RUN_MARK).touch()
    return rd


def stage_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    d = ensure_run_dir(run_dir) / stage
    d.mkdir(parents=True, exist_ok=True)
    return d


def run_root(path: str | os.PathLike) -> Path | None:
    """The run folder a file lies in (the nearest folder above it holding the run mark, a manifest or
    metrics.json), or None."""
    for d in Path(path).resolve().parents:
        if (d / RUN_MARK).exists() or (d / "manifest.json").exists() or (d / "metrics.json").exists():
            return d
    return None


def _map_strings(obj: Any, fn) -> Any:
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: _map_strings(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_map_strings(v, fn) for v in obj]
    return obj


def portable(obj: Any, root: Path) -> Any:
    """`obj` with every string that is a path inside `root` written as `<run>/...`."""
    r = str(root)
    return _map_strings(obj, lambda s: RUN_TOKEN + s[len(r):] if s == r or s.startswith(r + os.sep) else s)


def local(obj: Any, root: Path) -> Any:
    """`obj` with every `<run>/...` string turned into the path under `root` (the inverse of portable)."""
    r = str(root)
    return _map_strings(obj, lambda s: r + s[len(RUN_TOKEN):] if s.startswith(RUN_TOKEN) else s)


def figures_dir(run_dir: str | os.PathLike, stage: str) -> Path:
    d = stage_dir(run_dir, stage) / "figures"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _skip_write(every_rank: bool) -> bool:
    """True on a process other than the main one (several processes, kit.dist), unless every_rank."""
    return not every_rank and not dist.is_main()


def file_mode() -> int:
    """The mode open() would give a new file under the process's umask (mkstemp's own is 0600, which
    would keep a run folder from being shared with a group)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_text(path: str | os.PathLike, text: str, *, every_rank: bool = False) -> Path:
    path = Path(path)
    if _skip_write(every_rank):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    if _skip_write(False):
        plt.close(fig)
        return Path(path)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")  # per process: two writers never share it
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    os.replace(tmp, path)
    return path


def _plain(obj: Any) -> Any:
    """`obj` as JSON values (numpy numbers, tensors and paths converted)."""
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: str | os.PathLike, obj: Any, *, every_rank: bool = False) -> Path:
    root = run_root(path)
    obj = portable(_plain(obj), root) if root else obj
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n", every_rank=every_rank)


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    root = run_root(path)
    return local(obj, root) if root else obj


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping], *, every_rank: bool = False) -> Path:
    root = run_root(path)
    lines = [json.dumps(portable(_plain(r), root) if root else r, default=_json_default) for r in records]
    return atomic_write_text(path, "".join(line + "\n" for line in lines), every_rank=every_rank)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: invalid JSON record: {e.msg}") from None
    root = run_root(path)
    return local(out, root) if root else out


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(path.suffix + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _deep_update(base: dict, new: Mapping) -> dict:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _deep_update(base[k], v)
        else:
            base[k] = v
    return base


def update_json(path: str | os.PathLike, update: Mapping) -> dict:
    """Deep-merge `update` into a JSON file under a lock, atomically (the main process writes; every
    process gets the merged data)."""
    path = Path(path)
    if _skip_write(False):
        return _deep_update(read_json(path, {}) or {}, json.loads(json.dumps(update, default=_json_default)))
    with _locked(path):
        data = read_json(path, {}) or {}
        _deep_update(data, json.loads(json.dumps(update, default=_json_default)))
        write_json(path, data)
    return data


def record_metrics(run_dir: str | os.PathLike, key: str, values: Mapping) -> dict:
    """Merge one stage's figures into runs/<run>/metrics.json under `key`. Every process calls it at
    the same point of a stage; it returns once the main process has written (a barrier)."""
    data = update_json(resolve_run_dir(run_dir) / "metrics.json", {key: values})
    dist.wait()
    return data


def forget_json(path: str | os.PathLike, keys: Iterable[str | tuple[str, ...]]) -> None:
    """Drop entries from a JSON file (under its lock): a top-level key, or a tuple path to a nested one."""
    path = Path(path)
    if _skip_write(False):
        dist.wait()
        return
    with _locked(path):
        data = read_json(path, {}) or {}
        changed = False
        for key in keys:
            *parents, last = (key,) if isinstance(key, str) else key
            node = data
            for p in parents:
                node = node.get(p) if isinstance(node, dict) else None
            if isinstance(node, dict) and last in node:
                del node[last]
                changed = True
        if changed:
            write_json(path, data)
    dist.wait()


def forget_metrics(run_dir: str | os.PathLike, keys: Iterable[str | tuple[str, ...]]) -> None:
    """Drop entries from metrics.json (kit.runs.forget_json). Metrics are merged, so a result a rerun no
    longer makes (a round a shorter run does not have, a model no longer battled) would otherwise stay
    for later notebooks to read."""
    forget_json(resolve_run_dir(run_dir) / "metrics.json", keys)


def read_metrics(run_dir: str | os.PathLike) -> dict:
    return read_json(resolve_run_dir(run_dir) / "metrics.json", {}) or {}


def require_metrics(run_dir: str | os.PathLike, key: str, needed_by: str) -> dict:
    """An earlier stage's metrics, or a clear message saying which notebook to run first."""
    m = read_metrics(run_dir).get(key)
    if m is None:
        nb = pipeline.notebook_of_folder(key) or "?"
        raise FileNotFoundError(
            f"{resolve_run_dir(run_dir) / 'metrics.json'}: no '{key}' entry, which {needed_by} needs; "
            f"run notebook {nb} ({key}) for this run directory first")
    return m
