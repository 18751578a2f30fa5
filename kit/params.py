"""Profiles: YAML files in params/, layered with `extends:` and dotted overrides.

`params/base.yaml` declares every key the kit knows, with its default value; its types are the
schema. A profile may only set keys that base.yaml declares, with a value of the same type (an int
where a float is declared is fine; a key declared `null` takes any value). Mistakes fail with the
key, the file and what was expected, so a typo in a 2-hour GPU run fails in the first second.

A key's values can be narrowed further by a rule at the start of its comment in base.yaml,
`key: default  # [rule] what it means`:

    [> 0]   [>= 2]   [> 0, <= 1]   [0 .. 1]       numbers (finite; both ends of `..` included)
    [auto | cpu | cuda]                            one of these values
    [null | >= 1]                                  alternatives; `null` makes the key nullable
    [each >= 1]   [each A | B]                     every item of a list, every value of a mapping

A key whose default is not null may not be set to null unless its rule says `null`. The rules are
checked as each profile layer and the overrides are merged, so `--set rloo.k=1` fails at once
naming the key, the value and the rule.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
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


_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_]\w*):(?P<rest>.*)$")
_RULE = re.compile(r"#\s*\[(?P<rule>[^\]]+)\]")
_CMP = re.compile(r"^(>=|<=|>|<)\s*(\S+)$")
_OPS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b}


@functools.lru_cache(maxsize=None)
def rules(path: Path | None = None) -> dict[str, str]:
    """{dotted key: rule} from base.yaml's `key: default  # [rule] ...` annotations."""
    text = (path or PARAMS_DIR / f"{BASE}.yaml").read_text()
    out, stack = {}, []
    for line in text.splitlines():
        m = _KEY_LINE.match(line)
        if not m:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        r = _RULE.search(m["rest"])
        if r:
            out[".".join(k for _, k in stack)] = r["rule"].strip()
    return out


@functools.lru_cache(maxsize=None)
def comments(path: Path | None = None) -> dict[str, str]:
    """{dotted key: its comment in base.yaml} (the comment on its line and the comment lines under it,
    or the comment lines just above a section)."""
    lines = (path or PARAMS_DIR / f"{BASE}.yaml").read_text().splitlines()
    out, stack, last = {}, [], None
    for line in lines:
        m = _KEY_LINE.match(line)
        if m:
            indent = len(m["indent"])
            while stack and stack[-1][0] >= indent:
                stack.pop()
            stack.append((indent, m["key"]))
            last = ".".join(k for _, k in stack)
            c = m["rest"].split(" #", 1)[1].strip() if " #" in m["rest"] else ""
            out[last] = c
        elif line.strip().startswith("#") and last is not None:
            out[last] = (out[last] + " " + line.strip().lstrip("#").strip()).strip()
    return out


def explain(keys, P: Mapping) -> str:
    """Each key's (or section's keys') comment and rule from base.yaml, default and value in `P`."""
    base = load_profile(BASE)
    C = comments()
    rows = []
    for key in keys:
        found = [k for k in C if k == key or k.startswith(key + ".")]
        if not found:
            raise ParamsError(f"params explain: no key '{key}' in params/base.yaml (sections: {', '.join(sorted(base)[:20])})")
        for k in found:
            default, value = get(base, k), get(P, k)
            if isinstance(default, dict):
                continue
            rows.append(f"{k}: {value!r}" + ("" if value == default else f"   (default {default!r})")
                        + (f"\n    {C[k]}" if C[k] else ""))
    return "\n".join(rows)


def _rule_for(key: str) -> tuple[str | None, bool]:
    """(rule, applies to the value itself) for a dotted key: its own rule, or its parent's `each` rule."""
    R = rules()
    if key in R:
        return R[key], True
    parent = key.rsplit(".", 1)[0] if "." in key else None
    if parent in R and R[parent].startswith("each "):
        return R[parent][5:], True
    return None, False


def _allows(alt: str, v: Any) -> bool:
    """Whether `v` satisfies one alternative of a rule (a literal, `null`, comparisons or a range)."""
    if alt == "null":
        return v is None
    if ".." in alt:
        lo, hi = (float(x) for x in alt.split(".."))
        return _number(v) and lo <= v <= hi
    cmps = [_CMP.match(c.strip()) for c in alt.split(",")]
    if all(cmps):
        return _number(v) and all(_OPS[m.group(1)](v, float(m.group(2))) for m in cmps)
    return v == _yaml(alt) and not isinstance(v, bool) or (isinstance(v, str) and v == alt)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_rule(value: Any, default: Any, key: str, source: str) -> None:
    rule, _ = _rule_for(key)
    if value is None:
        if default is None or (rule and "null" in [a.strip() for a in rule.split("|")]):
            return
        like = f"keys {', '.join(list(default)[:5])}, ..." if isinstance(default, dict) else f"like {default!r}"
        raise ParamsError(f"{source}: key '{key}' may not be null; expected "
                          + (f"[{rule}]" if rule else f"{_type_name(default)} ({like})"))
    if not rule:
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamsError(f"{source}: key '{key}' got {value!r}; expected a finite number")
        return
    each = rule.startswith("each ")
    body = rule[5:] if each else rule
    items = (list(value.values()) if isinstance(value, Mapping) else value) if each else [value]
    if each and not isinstance(items, (list, tuple)):
        raise ParamsError(f"{source}: key '{key}' got {value!r}; expected a list or mapping whose items are [{body}]")
    for item in items:
        if not any(_allows(alt.strip(), item) for alt in body.split("|")):
            what = f"an item {item!r}" if each else repr(value)
            raise ParamsError(f"{source}: key '{key}' got {what}; expected [{rule}] (params/base.yaml)")


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
            if schema is not None and _rule_for(key)[0]:
                _check_rule(out[k], sub, key, source)
        else:
            if schema is not None:
                _check(v, sub, key, source)
                _check_rule(v, sub, key, source)
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
