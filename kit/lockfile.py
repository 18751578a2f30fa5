"""requirements.lock: the exact versions `make` installs, and whether this environment holds them.

The lock is uv's universal requirements file (`make lock`): one `name==version` line per package,
with environment markers where a line applies to some platforms or Pythons only, and hashes. A run
records `lock_status()` in its manifest, and the reference bands record the lock that made them, so
`kit verify` can say when a run was made with other packages than the bands were.

    >>> from kit.lockfile import pins
    >>> pins(["torch==2.14.1 \\\\", "    --hash=sha256:00", "nvidia-nccl-cu13==2.30.7 ; sys_platform == 'never'"])
    {'torch': '2.14.1'}
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
from pathlib import Path
from typing import Iterable

from kit.params import PROJECT_ROOT

LOCK_FILE = PROJECT_ROOT / "requirements.lock"


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pins(lines: Iterable[str]) -> dict[str, str]:
    """{normalised name: version} of the lock's lines whose markers hold in this environment."""
    from packaging.requirements import Requirement

    out = {}
    for raw in lines:
        line = raw.split("#", 1)[0].rstrip().rstrip("\\").strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        spec = next(iter(req.specifier), None)
        if spec is not None and spec.operator == "==":
            out[_norm(req.name)] = spec.version
    return out


def lock_status(path: Path = LOCK_FILE) -> dict:
    """The lock's sha256 and how this environment differs from it: {"file", "sha256", "matches",
    "differs": ["name: installed X, lock Y" ...]} (`sha256` None when there is no lock file)."""
    if not path.is_file():
        return {"file": str(path.name), "sha256": None, "matches": None, "differs": []}
    text = path.read_text()
    differs = []
    for name, want in sorted(pins(text.splitlines()).items()):
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have != want:
            differs.append(f"{name}: installed {have or 'nothing'}, lock {want}")
    return {"file": path.name, "sha256": hashlib.sha256(text.encode()).hexdigest(), "matches": not differs,
            "differs": differs}
