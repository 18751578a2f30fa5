"""Stage keys: the one rule that decides whether a saved result may be reused.

A stage's key is the hash of (a) its resolved settings and (b) the identities of the artifacts it
starts from. Its work goes into a folder named by the key, so a rerun with the same key resumes
or reuses what is there, and anything else (a changed setting, a retrained upstream model, other
data) starts over in a fresh folder. Nothing is decided by paths or modification times.

An artifact's identity:
- a folder or file a kit stage wrote and marked (`mark(folder, key)` writes `.kit_artifact.json`):
  that stage's key, which already covers everything the artifact was made from;
- any other folder or file (a user's checkpoint, a dataset split): a hash of its contents (names,
  sizes and bytes), memoised per process by (path, size, mtime) so a large model is read once;
- a model hub id: the id itself (pin a revision by downloading it and pointing at the folder).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from kit import dist
from kit.dist import is_main, num_processes, wait
from kit.params import params_hash
from kit.runs import read_json, write_json

MARK = ".kit_artifact.json"
_memo: dict[tuple, str] = {}


def _file_digest(p: Path) -> str:
    st = p.stat()
    memo_key = (str(p), st.st_size, st.st_mtime_ns)
    if memo_key not in _memo:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _memo[memo_key] = h.hexdigest()
    return _memo[memo_key]


def _skip(rel: Path) -> bool:
    # temp files, resume state and notebooks' checkpoints are not part of what an artifact is
    return any(part.startswith(".") or part.endswith((".tmp", ".partial", ".lock")) for part in rel.parts)


def artifact_id(where: str | os.PathLike) -> str:
    """The identity of an upstream artifact (see the module docstring)."""
    p = Path(where).expanduser()
    if not p.exists():
        if isinstance(where, str) and not where.startswith(("/", ".", "~")):
            return f"id:{where}"
        raise FileNotFoundError(f"{p}: no such artifact; expected a folder or file written by an earlier stage")
    marked = read_json(p / MARK) if p.is_dir() else None
    if marked and marked.get("key"):
        return f"key:{marked['key']}"
    if p.is_file():
        return f"sha256:{_file_digest(p)}"
    h = hashlib.sha256()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        rel = f.relative_to(p)
        if _skip(rel):
            continue
        h.update(f"{rel.as_posix()}\0{f.stat().st_size}\0{_file_digest(f)}\n".encode())
    return f"sha256:{h.hexdigest()}"


def stage_key(settings: Mapping[str, Any], upstream: Mapping[str, str] | None = None) -> str:
    """The key of a stage: its settings plus the identities of what it starts from (artifact_id).

    Under several processes (kit.dist) their number is a setting too: each trains on its share of
    every batch and generates its own block, so the result is not the one a single process makes."""
    settings = {**json.loads(json.dumps(settings, sort_keys=True, default=str)), **processes()}
    return params_hash({"settings": settings, "upstream": dict(sorted((upstream or {}).items()))})


def processes() -> dict:
    """{"processes": N} when N > 1 processes train and generate (kit.dist.key_processes), else {}: a
    setting of every key, left out for one process so that keys made before stay valid."""
    n = dist.key_processes()
    return {"processes": n} if n > 1 else {}


def keyed_dir(parent: str | os.PathLike, key: str) -> Path:
    """`<parent>/<key>`: where the work of one key lives (created)."""
    d = Path(parent) / key
    d.mkdir(parents=True, exist_ok=True)
    return d


def mark(folder: str | os.PathLike, key: str, **info: Any) -> Path:
    """Stamp a finished artifact with the key that made it (later stages take that as its identity)."""
    return write_json(Path(folder) / MARK, {"key": key, **info})


def marked_key(folder: str | os.PathLike) -> str | None:
    d = read_json(Path(folder) / MARK) if Path(folder).is_dir() else None
    return (d or {}).get("key")


def samples_id(samples: Iterable) -> str:
    """The identity of BDD-OIA samples: ids, labels and the bytes of every frame they show."""
    return params_hash([(s.id, list(map(int, s.actions)), list(map(int, s.reasons)),
                         [artifact_id(f) for f in s.frame_paths]) for s in samples])


RESULT_FILE = "train_result.json"


def keyed_training(parent: str | os.PathLike, key: str, train: Callable[[Path], Mapping], **info: Any) -> dict:
    """Train once per key: `train(out_dir)` runs in `<parent>/<key>/` (where it may resume its own
    checkpoints) and returns a result with "checkpoint"; the result is saved as train_result.json and
    the checkpoint marked with the key. A later call with the same key returns the saved result
    ("reused": True); any other key trains afresh in its own folder."""
    out = keyed_dir(parent, key)
    done = read_json(out / RESULT_FILE)
    if done and done.get("checkpoint") and marked_key(done["checkpoint"]) == key:
        if is_main():  # say so: a rerun that trains nothing should not look like one that trained
            when = done.get("trained_at") or time.strftime(  # the file's time: results saved before trained_at was
                "%Y-%m-%d %H:%M", time.localtime((out / RESULT_FILE).stat().st_mtime))
            steps = f", {done['steps']} steps" if done.get("steps") else ""
            print(f"{info.get('stage', Path(parent).parent.name)}: reused the training of key {key} "
                  f"({out}, trained {when}{steps}); a changed setting trains afresh", flush=True)
        return {**done, "key": key, "reused": True}

    res = {**train(out), "processes": num_processes()}  # how many processes trained it
    if is_main():  # under several processes, one writes
        mark(res["checkpoint"], key, **info)
        # when it was trained, kept in the result: a copied run folder's files carry the copy's times
        write_json(out / RESULT_FILE, {**res, "key": key, "trained_at": time.strftime("%Y-%m-%d %H:%M")})
    wait()
    return {**res, "key": key, "reused": False}
