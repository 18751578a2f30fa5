"""Profiles: YAML files in params/, layered with `extends:` and dotted overrides.

`params/base.yaml` declares every key the kit knows, with its default value; its types are the
schema. A profile may only set keys that base.yaml declares, with a value of the same type (an int
where a float is declared is fine; a key declared `null` takes any value). Mistakes fail with the
key, the file and what was expected, so a typo in a 2-hour GPU run fails in the first second.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PARAMS_DIR = PROJECT_ROOT / "params"
BASE = "base"


class ParamsError(ValueError):
    """A profile or override that does not fit the schema."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: it reads `1e-4` as a number, not as the string
    '1e-4' (YAML 1.1 wants `1.0e-4`), so `--set rloo.lr=1e-4` means what people type."""


_Loader.yaml_implicit_resolvers = {k: [r for r in v if r[0] != "tag:yaml.org,2002:float"]
                                   for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                              |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                              |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                              |[-+]?\.(?:inf|Inf|INF)
                              |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def find_profile(profile: str | Path) -> Path:
    """A profile name (`tiny`), a file name (`tiny.yaml`) or a path to a YAML file."""
    p = Path(profile)
    candidates = [p] if p.suffix in (".yaml", ".yml") else []
    candidates += [PARAMS_DIR / f"{profile}.yaml", PARAMS_DIR / str(profile)]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    known = sorted(x.stem for x in PARAMS_DIR.glob("*.yaml"))
    raise ParamsError(f"profile {profile!r} not found (looked in {PARAMS_DIR}); known profiles: {', '.join(known)}")


def _read_yaml(path: Path) -> dict:
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(v), type(v).__name__)


def _check(value: Any, default: Any, key: str, source: str) -> None:
    if default is None or value is None:
        return  # declared nullable / any, or explicitly unset
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ParamsError(f"{source}: key '{key}' expects {_type_name(default)} (like {default!r}), "
                          f"got {_type_name(value)} {value!r}")


def _merge(base: dict, over: Mapping, schema: dict | None, source: str, prefix: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if schema is not None and k not in schema:
            near = ", ".join(sorted(schema)[:12])
            raise ParamsError(f"{source}: unknown key '{key}' (known at this level: {near})")
        sub = schema.get(k) if schema is not None else None
        if isinstance(sub, dict) and isinstance(v, Mapping):
            out[k] = _merge(out.get(k) or {}, v, sub, source, f"{key}.")
        else:
            if schema is not None:
                _check(v, sub, key, source)
            out[k] = copy.deepcopy(v)
    return out


def _load_chain(path: Path, seen: tuple = ()) -> list[tuple[Path, dict]]:
    if path in seen:
        raise ParamsError(f"{path}: 'extends' makes a cycle: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        chain = [] if path.stem == BASE else _load_chain(PARAMS_DIR / f"{BASE}.yaml", seen + (path,))
    else:
        ppath = (path.parent / parent) if str(parent).endswith((".yaml", ".yml")) else find_profile(parent)
        if not ppath.is_file():
            raise ParamsError(f"{path}: 'extends: {parent}' names no profile file")
        chain = _load_chain(ppath.resolve(), seen + (path,))
    return chain + [(path, data)]


def parse_overrides(items: list[str] | Mapping | None) -> dict:
    """`["sft.epochs=3", "seed=1"]` or `{"sft.epochs": 3}` -> nested dict. Values are read as YAML."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        parsed = []
        for it in items:
            if "=" not in it:
                raise ParamsError(f"override {it!r}: expected KEY=VALUE, e.g. sft.epochs=3")
            k, v = it.split("=", 1)
            parsed.append((k.strip(), _yaml(v)))
        pairs = parsed
    nested: dict = {}
    for k, v in pairs:
        node = nested
        parts = str(k).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if isinstance(v, Mapping) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]].update(v)
        else:
            node[parts[-1]] = v
    return nested


def load_profile(profile: str | Path = "tiny", overrides: list[str] | Mapping | None = None) -> dict:
    """Resolve a profile: base.yaml <- parents <- profile <- overrides, validated at each layer."""
    path = find_profile(profile)
    chain = _load_chain(path)
    schema = chain[0][1]  # base.yaml
    resolved: dict = {}
    for i, (p, data) in enumerate(chain):
        resolved = _merge(resolved, data, None if i == 0 else schema, str(p))
    resolved = _merge(resolved, parse_overrides(overrides), schema, "overrides")
    resolved["profile"] = path.stem
    return resolved


def params_hash(params: Mapping) -> str:
    """Stable digest of resolved parameters (decides whether a stage must rerun)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def get(params: Mapping, dotted: str, default: Any = None) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def dump(params: Mapping) -> str:
    return yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=False)
