"""A disk cache of judge answers: one small JSON file per request, named by the request's hash.

Keyed by backend, model and the full request (messages), so a rerun, or another stage asking the
same question of the same judge, sends nothing. One file per entry (written atomically) is safe with
the judge's threads and with several processes, and a crash loses at most the answer in flight.
Only answers are stored, never a key or a header.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

from kit.runs import read_json, write_json


def request_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class DiskCache:
    def __init__(self, folder):
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: Mapping) -> Path:
        h = request_hash(key)
        return self.folder / h[:2] / f"{h}.json"

    def get(self, key: Mapping) -> dict | None:
        p = self._path(key)
        try:
            return read_json(p)
        except ValueError:  # a torn or foreign file: ask again rather than fail
            return None

    def put(self, key: Mapping, value: Mapping) -> None:
        # every process caches the answers it asked for (kit.dist shards the judge's items)
        write_json(self._path(key), {"backend": key.get("backend"), "model": key.get("model"), **value},
                   every_rank=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json"))
