"""The toy world: a seeded procedural generator of driving scenes, written in the EXACT BDD-OIA and
CODA-LM layouts so that the real loaders are the ones exercised.

A scene is a scene graph (a JSON-able dict, below); `labels(graph)` turns it into BDD-OIA's
4 actions and 21 reasons, `caption(graph)` into a generic description that does not state the
action (for pretraining the tiny models), `coda_annotation(...)` into CODA-LM's texts, and
kit.data.render draws it with PIL. Everything is a deterministic function of (seed, split, index):
the same settings give the same bytes, and a split whose files exist and whose `toy/meta.json`
records the same settings is skipped on a rerun.

Scene graph keys:
    sky            "day" | "overcast" | "dusk"
    lanes          {"left": "none"|"dashed"|"solid", "right": ...}  the ego lane's boundary lines
                   ("none": no lane on that side, the road ends; "solid": a wide yellow line)
    ego_lane       "straight" | "left_turn" | "right_turn"   (turn lanes have a big arrow on the road)
    light          None | {"color": "red"|"yellow"|"green", "arrow": None|"left"|"right"} (green arrow)
    sign           None | {"kind": "stop"|"speed_limit"}       (speed limit: a distractor, no label)
    front_car      None | {"distance": "near"|"far"|"mid", "turning": None|"left"|"right", "t", "color", "kind"}
    ego_obstacle   None | {"kind": "pedestrian"|"rider"|"cone"|"debris"|"animal"|"overturned_vehicle"|"road_works", "t", ...}
    left_lane_obstacle / right_lane_obstacle   None | {"kind": "car"|"truck"|"cone"|"road_works", "t", "color"}
    corner_case    bool (a rare object: debris, animal, overturned vehicle, road works)
    motion         per-frame offsets for multi-frame clips (dash phase, approach speed, drift)

Label rules (`labels`), BDD-OIA's meaning; every rule reads only the graph:

    | scene element                                     | action            | reason |
    |---------------------------------------------------|-------------------|--------|
    | light red or yellow                               | stop = 1          | 3      |
    | sign "stop"                                       | stop = 1          | 4      |
    | front car "near" and not turning                  | stop = 1          | 5      |
    | ego_obstacle pedestrian                           | stop = 1          | 6      |
    | ego_obstacle rider                                | stop = 1          | 7      |
    | ego_obstacle cone/debris/animal/overturned/works  | stop = 1          | 8      |
    | stop = 0 and ego_lane "straight"                  | forward = 1       | -      |
    |   ... and light green                             |                   | 0      |
    |   ... and front car "far" (following it)          |                   | 1      |
    |   ... and no front car and no ego obstacle        |                   | 2      |
    | lanes.left "none"                                 | (left = 0)        | 9      |
    | left_lane_obstacle                                | (left = 0)        | 10     |
    | lanes.left "solid"                                | (left = 0)        | 11     |
    | ego_lane "left_turn"                              | left = 1          | 12     |
    | light arrow "left"                                | left = 1          | 13     |
    | front car turning "left"                          | left = 1          | 14     |
    | lanes.right "none" / right_lane_obstacle / "solid"| (right = 0)       | 15/16/17 |
    | ego_lane "right_turn" / arrow "right" / turning right | right = 1     | 18/19/20 |

    left = 1 iff any of 12-14; the sampler never combines 12-14 with 9-11 (a left opener forces
    a dashed left line and a free left lane), and likewise on the right. Stop and a turn can both
    be 1 (e.g. red light on a left-turn lane: stop + left, reasons 3 + 12). Every scene has at
    least one action (not stopping means forward in a straight lane, or the turn of a turn lane).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from kit.data import DataError
from kit.data.render import render_scene
from kit.labels import (
    ACTION_PROMPT,
    ACTION_TEXTS,
    ANSWER_PROMPT,
    DESCRIBE_PROMPT,
    N_REASONS,
    REASONS,
    format_action_answer,
    format_answer,
)
from kit.runs import file_mode, read_json, read_jsonl, write_json, write_jsonl

TOY_VERSION = 1
BDD_SPLITS = ("train", "val", "test")
CODA_SPLITS = ("Train", "Val", "Test", "Mini")
CORNER_KINDS = ("debris", "animal", "overturned_vehicle", "road_works")

CAR_COLORS = {"blue": (40, 70, 200), "white": (235, 235, 235), "black": (30, 30, 35), "silver": (170, 170, 180),
              "purple": (120, 50, 160), "teal": (20, 140, 150)}
SHIRT_COLORS = {"magenta": (230, 30, 200), "orange": (255, 120, 0), "cyan": (0, 200, 230), "white": (245, 245, 245)}

# Sampling probabilities. `uniform`: every action and reason is frequent; `bdd`: skewed toward
# BDD-OIA's frequencies (stop and "traffic light is not green" dominant, turn reasons rare).
BALANCES: dict[str, dict[str, Any]] = {
    "uniform": {
        "light": 0.5, "light_color": {"red": 0.35, "yellow": 0.15, "green": 0.5}, "arrow": 0.3,
        "sign": 0.3, "stop_sign": 0.6,
        "front_car": 0.55, "front": {"near": 0.25, "far": 0.4, "left": 0.175, "right": 0.175},
        "ego_obstacle": 0.2, "obstacle": {"pedestrian": 0.35, "rider": 0.3, "cone": 0.35},
        "ego_lane": {"straight": 0.7, "left_turn": 0.15, "right_turn": 0.15},
        "line": {"none": 0.3, "solid": 0.3, "dashed": 0.4}, "side_obstacle": 0.3,
    },
    "bdd": {
        "light": 0.65, "light_color": {"red": 0.6, "yellow": 0.1, "green": 0.3}, "arrow": 0.06,
        "sign": 0.3, "stop_sign": 0.8,
        "front_car": 0.6, "front": {"near": 0.5, "far": 0.38, "left": 0.06, "right": 0.06},
        "ego_obstacle": 0.15, "obstacle": {"pedestrian": 0.45, "rider": 0.25, "cone": 0.3},
        "ego_lane": {"straight": 0.88, "left_turn": 0.06, "right_turn": 0.06},
        "line": {"none": 0.3, "solid": 0.35, "dashed": 0.35}, "side_obstacle": 0.35,
    },
}


# --- sampling ----------------------------------------------------------------------------------

def _pick(rng: random.Random, dist: Mapping[str, float]) -> str:
    keys = list(dist)
    return rng.choices(keys, weights=[dist[k] for k in keys])[0]


def _color(rng: random.Random, table: Mapping[str, tuple]) -> tuple[str, list[int]]:
    name = rng.choice(sorted(table))
    return name, list(table[name])


def sample_graph(rng: random.Random, balance: str = "uniform", corner_case_rate: float = 0.15) -> dict:
    """One random scene graph (consistent by construction: see the module docstring)."""
    if balance not in BALANCES:
        raise DataError(f"params data.toy.balance: expected one of {sorted(BALANCES)}, got {balance!r}")
    B = BALANCES[balance]
    g: dict[str, Any] = {"sky": _pick(rng, {"day": 0.6, "overcast": 0.25, "dusk": 0.15}),
                         "light": None, "sign": None, "front_car": None, "ego_obstacle": None,
                         "left_lane_obstacle": None, "right_lane_obstacle": None, "corner_case": False}
    g["ego_lane"] = _pick(rng, B["ego_lane"])
    turn_side = {"left_turn": "left", "right_turn": "right"}.get(g["ego_lane"])
    if rng.random() < B["light"]:
        arrow = rng.choice(["left", "right"]) if rng.random() < B["arrow"] else None
        if turn_side and arrow and arrow != turn_side:
            arrow = turn_side
        g["light"] = {"color": _pick(rng, B["light_color"]), "arrow": arrow}
    elif rng.random() < B["sign"]:
        g["sign"] = {"kind": "stop" if rng.random() < B["stop_sign"] else "speed_limit"}
    corner = rng.random() < corner_case_rate
    if rng.random() < B["ego_obstacle"] or (corner and rng.random() < 0.7):
        kind = rng.choice(CORNER_KINDS) if corner else _pick(rng, B["obstacle"])
        ob: dict[str, Any] = {"kind": kind, "t": round(rng.uniform(0.6, 0.7), 3), "dx": round(rng.uniform(-0.04, 0.04), 3)}
        if kind in ("pedestrian", "rider"):
            ob["color_name"], ob["color"] = _color(rng, SHIRT_COLORS)
        if kind == "overturned_vehicle":
            ob["color_name"], ob["color"] = _color(rng, CAR_COLORS)
        if kind == "debris":
            ob["pieces"] = [[round(rng.uniform(-0.8, 0.8), 3), round(rng.uniform(0.4, 1.0), 3), rng.randrange(0, 60)]
                            for _ in range(rng.randint(3, 5))]
        g["ego_obstacle"] = ob
        g["corner_case"] = kind in CORNER_KINDS
    if rng.random() < B["front_car"]:
        mode = _pick(rng, B["front"])
        if mode in ("left", "right") and turn_side and mode != turn_side:
            mode = turn_side
        if g["ego_obstacle"] and mode == "near":
            mode = "far"
        name, col = _color(rng, CAR_COLORS)
        t = {"near": rng.uniform(0.6, 0.68), "far": rng.uniform(0.24, 0.3)}.get(mode, rng.uniform(0.4, 0.47))
        g["front_car"] = {"distance": mode if mode in ("near", "far") else "mid",
                          "turning": mode if mode in ("left", "right") else None, "t": round(t, 3),
                          "kind": "truck" if rng.random() < 0.2 else "car", "color_name": name, "color": col}
    lanes = {}
    for side in ("left", "right"):
        lanes[side] = _pick(rng, B["line"])
        if lanes[side] != "none" and rng.random() < B["side_obstacle"]:
            if corner and not g["corner_case"]:
                kind = "road_works"
                g["corner_case"] = True
            else:
                kind = "truck" if rng.random() < 0.2 else ("cone" if rng.random() < 0.15 else "car")
            name, col = _color(rng, CAR_COLORS)
            g[f"{side}_lane_obstacle"] = {"kind": kind, "t": round(rng.uniform(0.45, 0.62), 3),
                                          "color_name": name, "color": col}
    g["lanes"] = lanes
    # A side with a turn opener (12-14 / 18-20) is open: dashed line, a lane, nothing in it.
    for side in ("left", "right"):
        if _openers(g, side):
            g["lanes"][side] = "dashed"
            g[f"{side}_lane_obstacle"] = None
    g["motion"] = {"dash_phase": round(rng.random(), 3), "front_dt": round(rng.uniform(0.0, 0.03), 3),
                   "side_dx": round(rng.uniform(-0.03, 0.03), 3), "obstacle_dx": round(rng.uniform(-0.03, 0.03), 3)}
    return g


def _openers(g: Mapping, side: str) -> list[int]:
    base = 12 if side == "left" else 18
    out = []
    if g["ego_lane"] == f"{side}_turn":
        out.append(base)
    if g.get("light") and g["light"].get("arrow") == side:
        out.append(base + 1)
    if g.get("front_car") and g["front_car"].get("turning") == side:
        out.append(base + 2)
    return out


def labels(g: Mapping) -> tuple[list[int], list[int]]:
    """(actions[4], reasons[21]) of a scene graph, by the rules in the module docstring."""
    r = [0] * N_REASONS
    light, fc, ob = g.get("light"), g.get("front_car"), g.get("ego_obstacle")
    if light and light["color"] in ("red", "yellow"):
        r[3] = 1
    if g.get("sign") and g["sign"]["kind"] == "stop":
        r[4] = 1
    if fc and fc["distance"] == "near" and not fc.get("turning"):
        r[5] = 1
    if ob:
        r[{"pedestrian": 6, "rider": 7}.get(ob["kind"], 8)] = 1
    stop = int(any(r[3:9]))
    forward = int(not stop and g["ego_lane"] == "straight")
    if forward:
        if light and light["color"] == "green":
            r[0] = 1
        if fc and fc["distance"] == "far" and not fc.get("turning"):
            r[1] = 1
        if not fc and not ob:
            r[2] = 1
    turn = {}
    for side, base_not in (("left", 9), ("right", 15)):
        if g["lanes"][side] == "none":
            r[base_not] = 1
        if g.get(f"{side}_lane_obstacle"):
            r[base_not + 1] = 1
        if g["lanes"][side] == "solid":
            r[base_not + 2] = 1
        ops = _openers(g, side)
        for i in ops:
            r[i] = 1
        if ops and any(r[base_not:base_not + 3]):
            raise DataError(f"scene graph: {side} side has both a turn opener {ops} and a blocker; "
                            "expected the sampler to keep them apart")
        turn[side] = int(bool(ops))
    return [forward, stop, turn["left"], turn["right"]], r


def sample_scene(seed: int, split: str, index: int, balance: str = "uniform", corner_case_rate: float = 0.15,
                 want_reason: int | None = None, tries: int = 400) -> dict:
    """The graph of scene `index` of `split` (deterministic). With `want_reason`, rejection-sample
    until that reason is present (used to put every reason in every split)."""
    rng = random.Random(f"toy:{seed}:{split}:{index}")
    for _ in range(tries):
        g = sample_graph(rng, balance, corner_case_rate)
        if want_reason is None or labels(g)[1][want_reason]:
            return g
    raise DataError(f"toy world: reason {want_reason} not reached in {tries} samples (balance {balance!r})")


def file_name_for(seed: int, split: str, index: int) -> str:
    """A BDD-like file name: `<8 hex>-<8 hex>_<n>.jpg`."""
    h = hashlib.sha1(f"toy:{seed}:{split}:{index}".encode()).hexdigest()
    return f"{h[:8]}-{h[8:16]}_{int(h[16], 16) % 6}.jpg"


# --- texts -------------------------------------------------------------------------------------

_OBSTACLE_NOUN = {"pedestrian": "a pedestrian", "rider": "a cyclist", "cone": "traffic cones",
                  "debris": "debris", "animal": "an animal", "overturned_vehicle": "an overturned car",
                  "road_works": "road works with a striped barrier", "car": "a car", "truck": "a truck"}


def _vehicle_phrase(o: Mapping) -> str:
    return f"a {o.get('color_name', '')} {o.get('kind', 'car')}".replace("  ", " ")


def caption(g: Mapping, rng: random.Random | None = None) -> str:
    """A generic scene description from the graph. It names what is there (lights, lines, cars,
    people) but never the action the ego car should take.

    What matters for driving comes first (lights, signs, what is ahead, then lanes, then the road
    and the sky): a model that learns these captions opens its descriptions with the facts the
    reasons are about, so notebook 05's short descriptions (rloo.max_new_tokens) reach them.
    """
    rng = rng or random.Random(json.dumps(g, sort_keys=True))
    s = []
    if g.get("light"):
        li = g["light"]
        t = f"A traffic light above the road shows {li['color']}"
        if li.get("arrow"):
            t += f", with a green {li['arrow']} arrow"
        s.append(t + ".")
    if g.get("sign"):
        s.append("A red stop sign stands at the side of the road." if g["sign"]["kind"] == "stop"
                 else "A speed limit sign stands at the side of the road.")
    fc = g.get("front_car")
    if fc:
        v = _vehicle_phrase(fc)
        if fc.get("turning"):
            s.append(f"{v.capitalize()} ahead is turning {fc['turning']} with its indicator on.")
        else:
            s.append(f"{v.capitalize()} is {'close' if fc['distance'] == 'near' else 'far'} ahead in the same lane.")
    ob = g.get("ego_obstacle")
    if ob:
        noun = _OBSTACLE_NOUN[ob["kind"]]
        s.append(rng.choice([f"There is {noun} on the road ahead.", f"{noun.capitalize()} in the lane ahead."])
                 if not noun.endswith("s") or ob["kind"] == "road_works" else f"There are {noun} on the road ahead.")
    if not fc and not ob:
        s.append("Nothing blocks the ego lane.")
    for side in ("left", "right"):
        o = g.get(f"{side}_lane_obstacle")
        if o:
            noun = _vehicle_phrase(o) if o["kind"] in ("car", "truck") else _OBSTACLE_NOUN[o["kind"]]
            s.append(f"{noun[0].upper() + noun[1:]} {'are' if noun.endswith('cones') else 'is'} in the {side} lane.")
    if g["ego_lane"] != "straight":
        side = g["ego_lane"].split("_")[0]
        s.append(f"A white {side} arrow is painted on the ego lane.")
    for side in ("left", "right"):
        kind = g["lanes"][side]
        if kind == "none":
            s.append(f"There is no lane on the {side}; the road ends at the grass.")
        else:
            s.append(f"A {'solid yellow' if kind == 'solid' else 'dashed white'} line is on the {side}.")
    sky = {"day": "on a clear day", "overcast": "under an overcast sky", "dusk": "at dusk"}[g.get("sky", "day")]
    n = 1 + (g["lanes"]["left"] != "none") + (g["lanes"]["right"] != "none")
    s.append(rng.choice([f"A road with {n} lane{'s' if n > 1 else ''} {sky}.",
                         f"The view from the driver's seat {sky}, on a road with {n} lane{'s' if n > 1 else ''}."]))
    return " ".join(s)


def driving_suggestion(g: Mapping) -> str:
    """A natural-language driving suggestion that follows the labels (CODA-LM's third task)."""
    a, r = labels(g)
    why_stop = {3: "the traffic light is not green", 4: "there is a stop sign", 5: "a car is close ahead",
                6: "a pedestrian is in the lane", 7: "a cyclist is in the lane", 8: "an obstacle blocks the lane"}
    parts = []
    if a[1]:
        parts.append("Slow down and stop, because " + " and ".join(why_stop[i] for i in range(3, 9) if r[i]) + ".")
    if a[0]:
        why = [t for i, t in ((0, "the light is green"), (1, "you can follow the car ahead"), (2, "the road is clear")) if r[i]]
        parts.append("Keep moving forward" + (", since " + " and ".join(why) if why else "") + ".")
    for side, base, act in (("left", 12, 2), ("right", 18, 3)):
        if a[act]:
            why = [t for i, t in ((base, f"you are on the {side}-turn lane"),
                                   (base + 1, f"the {side} arrow is green"),
                                   (base + 2, f"the car ahead is turning {side}")) if r[i]]
            parts.append(f"Turn {side}, as " + " and ".join(why) + ".")
        else:
            nb = base - 3
            why = [t for i, t in ((nb, f"there is no lane on the {side}"), (nb + 1, f"the {side} lane is occupied"),
                                   (nb + 2, f"a solid line is on the {side}")) if r[i]]
            if why:
                parts.append(f"Do not move {side}: " + " and ".join(why) + ".")
    return " ".join(parts)


# category_name of each drawn object kind: names from CODA-LM's own vocabulary, each one the official
# evaluator maps to a class (kit.data.coda_lm.REGION_CLASSES); CODA labels an overturned car "car"
_REGION_NAME = {"car": "car", "truck": "truck", "pedestrian": "pedestrian", "rider": "cyclist", "cone": "traffic_cone",
                "road_works": "barrier", "debris": "debris", "animal": "dog", "overturned_vehicle": "car",
                "traffic_light": "traffic_light", "arrow_light": "traffic_light", "stop_sign": "traffic_sign",
                "speed_limit_sign": "traffic_sign"}


def _object_sentences(g: Mapping, o: Mapping) -> tuple[str, str]:
    """(description, explanation) of one drawn object."""
    kind, node = o["kind"], o["node"]
    where = {"front_car": "ahead in the ego lane", "ego_obstacle": "in the ego lane",
             "left_lane_obstacle": "in the left lane", "right_lane_obstacle": "in the right lane"}.get(node, "")
    if kind in ("car", "truck"):
        src = g[node]
        desc = f"{_vehicle_phrase(src).capitalize()} is {where}"
        if node == "front_car":
            if src.get("turning"):
                desc += f", turning {src['turning']} with its indicator on"
                exp = f"It is leaving the lane to the {src['turning']}, so the ego car can follow its turn with care."
            elif src["distance"] == "near":
                desc += ", close to the ego car"
                exp = "It is close, so the ego car must slow down and keep a safe distance."
            else:
                desc += ", far away"
                exp = "It is far ahead, so the ego car can follow the traffic."
        else:
            exp = f"It occupies the {node.split('_')[0]} lane, so the ego car should not change into it."
        return desc + ".", exp
    if kind == "traffic_light":
        li = g["light"]
        return (f"A traffic light above the road shows {li['color']}.",
                "The ego car must stop before the intersection." if li["color"] != "green"
                else "The ego car may proceed through the intersection.")
    if kind == "arrow_light":
        side = g["light"]["arrow"]
        return f"A green {side} arrow lamp is lit beside the traffic light.", f"Turning {side} is allowed."
    if kind == "stop_sign":
        return "A red octagonal stop sign on the right side of the road.", "The ego car must come to a full stop."
    if kind == "speed_limit_sign":
        return "A round speed limit sign on the right side of the road.", "The ego car should keep to the limit."
    noun = _OBSTACLE_NOUN.get(kind, kind)
    verb = "are" if kind in ("cone", "debris") else "is"
    desc = f"{noun[0].upper() + noun[1:]} {verb} {where}."
    if node == "ego_obstacle":
        exp = {"pedestrian": "A person on the road is at risk; the ego car must stop and yield.",
               "rider": "The cyclist is vulnerable and slow; the ego car must slow down and keep its distance."}.get(
            kind, "It blocks the lane, so the ego car must slow down and stop or go around it safely.")
    else:
        exp = f"It blocks the {node.split('_')[0]} lane, so the ego car should not change into it."
    return desc, exp


_GENERAL_KEY = {"car": "vehicles", "truck": "vehicles", "overturned_vehicle": "vehicles",
                "pedestrian": "vulnerable_road_users", "rider": "vulnerable_road_users",
                "stop_sign": "traffic signs", "speed_limit_sign": "traffic signs",
                "traffic_light": "traffic lights", "arrow_light": "traffic lights",
                "cone": "traffic cones", "road_works": "barriers", "debris": "other objects", "animal": "other objects"}
GENERAL_KEYS = ["vehicles", "vulnerable_road_users", "traffic signs", "traffic lights", "traffic cones",
                "barriers", "other objects"]


def coda_annotation(g: Mapping, objects: list[dict]) -> dict:
    """One CODA-LM JSON (exact key spelling) from a graph and the renderer's object boxes."""
    gp: dict[str, Any] = {k: [] for k in GENERAL_KEYS}
    regions = {}
    for i, o in enumerate(objects, 1):
        desc, exp = _object_sentences(g, o)
        gp[_GENERAL_KEY[o["kind"]]].append({"description": desc, "explanation": exp})
        regions[str(i)] = {"description and explanation": f"{desc} {exp}", "box": list(o["box"]),
                           "category_name": _REGION_NAME[o["kind"]]}
    gp["description and explanation"] = caption(g) + " " + ("This is an unusual scene with a corner-case object. "
                                                            if g.get("corner_case") else "")
    gp["description and explanation"] = gp["description and explanation"].strip()
    return {"general_perception": gp, "region_perception": regions, "driving_suggestion": driving_suggestion(g)}


# --- writers -----------------------------------------------------------------------------------

def _settings_hash(d: Mapping) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _save_jpeg(img, path: Path, quality: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    os.close(fd)
    try:
        img.save(tmp, format="JPEG", quality=quality)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _meta(root: Path) -> dict:
    return read_json(root / "toy" / "meta.json", {}) or {}


def _split_current(root: Path, kind: str, split: str, h: str, files: list[Path]) -> bool:
    m = _meta(root)
    return (m.get("kind") == kind and (m.get("splits") or {}).get(split, {}).get("hash") == h
            and all(f.exists() for f in files))


def _mark_split(root: Path, kind: str, split: str, h: str, info: dict) -> None:
    m = _meta(root)
    if m.get("kind") != kind:
        m = {"kind": kind, "version": TOY_VERSION, "splits": {}}
    m.setdefault("splits", {})[split] = {"hash": h, **info}
    write_json(root / "toy" / "meta.json", m)


def _toy(cfg: Mapping, key: str, default: Any) -> Any:
    v = cfg.get(key, default)
    return default if v is None else v


def _scene_plan(seed: int, split: str, n: int, balance: str, ccr: float) -> list[dict]:
    """n graphs; scene i < 21 is rejection-sampled until it carries reason i, so every reason (hence
    every action) occurs in every split of 21 or more scenes; the rest follow the balance freely.
    (File names are hashes, so the forced scenes are spread through the sorted split.)"""
    return [sample_scene(seed, split, i, balance, ccr, want_reason=i if i < N_REASONS else None) for i in range(n)]


def generate_bdd_oia(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """Write the toy world in the BDD-OIA layout under `root` (params `data.toy`). Idempotent:
    returns {split: {"samples", "skipped": bool, "seconds"}}."""
    from tqdm.auto import tqdm

    root = Path(root)
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    frames, q = int(_toy(cfg, "frames", 1)), int(_toy(cfg, "jpeg_quality", 90))
    balance, ccr = str(_toy(cfg, "balance", "uniform")), float(_toy(cfg, "corner_case_rate", 0.15))
    conf_rate = float(_toy(cfg, "confusing_rate", 0.0))
    if frames < 1:
        raise DataError(f"params data.toy.frames: expected an integer >= 1, got {frames}")
    out = {}
    for split, n in (cfg.get("splits") or {}).items():
        n = int(n)
        settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "frames": frames, "q": q, "balance": balance,
                    "ccr": ccr, "conf": conf_rate, "n": n, "split": split}
        h = _settings_hash(settings)
        ann = [root / f"{split}_25k_images_actions.json", root / f"{split}_25k_images_reasons.json",
               root / "toy" / f"scenes_{split}.jsonl"]
        if _split_current(root, "bdd_oia", split, h, ann):
            out[split] = {"samples": n, "skipped": True, "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        graphs = _scene_plan(seed, split, n, balance, ccr)
        images, annotations, reasons, side = [], [], [], []
        for i, g in enumerate(tqdm(graphs, desc=f"toy BDD-OIA {split}", disable=not progress)):
            fn = file_name_for(seed, split, i)
            stem = Path(fn).stem
            for k in range(frames - 1, -1, -1):  # earlier frames first; k = frames back from the last
                img, objs = render_scene(g, W, H, frame_back=k)
                path = root / "lastframe" / "data" / fn if k == 0 else root / "frames" / stem / f"{frames - 1 - k}.jpg"
                _save_jpeg(img, path, q)
            a, r = labels(g)
            cat = list(a)
            rng = random.Random(f"conf:{seed}:{split}:{i}")
            if conf_rate > 0 and i >= N_REASONS and rng.random() < conf_rate:
                cat = cat + [1]  # BDD-OIA's "confusing" flag: the loader drops these (counted)
            images.append({"file_name": fn, "id": i})
            annotations.append({"category": cat})
            reasons.append({"file_name": fn, "reason": r})
            side.append({"file_name": fn, "caption": caption(g), "actions": a, "reasons": r, "graph": g})
        images.sort(key=lambda d: d["file_name"])  # ids keep pointing at annotations[id]
        reasons.sort(key=lambda d: d["file_name"])
        write_jsonl(ann[2], side)
        write_json(ann[0], {"images": images, "annotations": annotations})
        write_json(ann[1], reasons)
        dt = time.perf_counter() - t0
        _mark_split(root, "bdd_oia", split, h, {"samples": n, "settings": settings})
        out[split] = {"samples": n, "skipped": False, "seconds": round(dt, 3)}
    return out


def coda_names(split: str, i: int, n_val: int) -> tuple[str, str]:
    """(json path relative to root, image path relative to root) of toy CODA-LM sample i of split."""
    if split == "Train":
        num = f"{i + 1:04d}"
        return f"CODA-LM/Train/val_{num}.json", f"val/images/{num}.jpg"
    if split in ("Val", "Mini"):  # Mini is a subset of Val: same images
        num = f"{i + 1:04d}"
    elif split == "Test":
        num = f"{n_val + i + 1:04d}"
    else:
        raise DataError(f"CODA-LM split {split!r}: expected one of {', '.join(CODA_SPLITS)}")
    return f"CODA-LM/{split}/test_{num}.json", f"test/images/{num}.jpg"


def generate_coda_lm(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """Write the toy world in the CODA-LM layout under `root` (params `data.toy`, `coda_splits`)."""
    from tqdm.auto import tqdm

    root = Path(root)
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    q = int(_toy(cfg, "jpeg_quality", 90))
    balance = str(_toy(cfg, "balance", "uniform"))
    ccr = float(_toy(cfg, "coda_corner_case_rate", 0.6))
    sizes = {k: int(v) for k, v in (cfg.get("coda_splits") or {}).items()}
    for k in sizes:
        if k not in CODA_SPLITS:
            raise DataError(f"params data.toy.coda_splits: unknown split {k!r}; expected {', '.join(CODA_SPLITS)}")
    n_val = sizes.get("Val", 0)
    if sizes.get("Mini", 0) > n_val:
        raise DataError(f"params data.toy.coda_splits.Mini: expected <= Val ({n_val}) since Mini is a subset of Val, "
                        f"got {sizes['Mini']}")
    out = {}
    for split in [s for s in CODA_SPLITS if s in sizes]:
        n = sizes[split]
        settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "q": q, "balance": balance, "ccr": ccr,
                    "n": n, "n_val": n_val, "split": split}
        h = _settings_hash(settings)
        names = [coda_names(split, i, n_val) for i in range(n)]
        files = [root / j for j, _ in names] + [root / "toy" / f"scenes_{split}.jsonl"]
        if _split_current(root, "coda_lm", split, h, files):
            out[split] = {"samples": n, "skipped": True, "seconds": 0.0}
            continue
        t0 = time.perf_counter()
        scene_split = "Val" if split == "Mini" else split
        side = []
        for i in tqdm(range(n), desc=f"toy CODA-LM {split}", disable=not progress):
            g = sample_scene(seed, f"coda:{scene_split}", i, balance, ccr)
            jrel, irel = names[i]
            img, objs = render_scene(g, W, H)
            if split != "Mini" or not (root / irel).exists():
                _save_jpeg(img, root / irel, q)
            write_json(root / jrel, coda_annotation(g, objs))
            side.append({"file_name": Path(irel).name, "json": jrel, "caption": caption(g), "graph": g})
        write_jsonl(root / "toy" / f"scenes_{split}.jsonl", side)
        _mark_split(root, "coda_lm", split, h, {"samples": n, "settings": settings})
        out[split] = {"samples": n, "skipped": False, "seconds": round(time.perf_counter() - t0, 3)}
    if int(_toy(cfg, "coda_unlabeled", 0)):
        out["Unlabeled"] = generate_coda_pool(root, cfg, progress=progress)
    return out


POOL_DIR = "unlabeled/images"          # the unlabeled pool, images only (paper A's "unlabeled driving images")
HIDDEN_POOL = "toy/hidden/unlabeled.jsonl"   # its scene graphs: read by measurements only (kit.synth.quality)


def generate_coda_pool(root: str | os.PathLike, cfg: Mapping, *, progress: bool = True) -> dict:
    """The toy world's unlabeled pool for Track A's synthesis (params `data.toy.coda_unlabeled`
    images): `<root>/unlabeled/images/<00001>.jpg`, drawn like CODA-LM's scenes (same corner-case
    rate) but from their own seed stream. Each scene's graph, drawn objects and the CODA-LM JSON it
    would have had are kept aside in `<root>/toy/hidden/unlabeled.jsonl`, for measuring the
    synthetic data against the truth; the synthesis itself never opens that file."""
    from tqdm.auto import tqdm

    root = Path(root)
    n = int(_toy(cfg, "coda_unlabeled", 0))
    if n < 0:
        raise DataError(f"params data.toy.coda_unlabeled: expected an integer >= 0, got {n}")
    seed, W, H = int(_toy(cfg, "seed", 0)), int(_toy(cfg, "width", 192)), int(_toy(cfg, "height", 128))
    q = int(_toy(cfg, "jpeg_quality", 90))
    balance, ccr = str(_toy(cfg, "balance", "uniform")), float(_toy(cfg, "coda_corner_case_rate", 0.6))
    settings = {"version": TOY_VERSION, "seed": seed, "W": W, "H": H, "q": q, "balance": balance, "ccr": ccr, "n": n}
    h = _settings_hash(settings)
    names = [f"{i + 1:05d}.jpg" for i in range(n)]
    hidden = root / HIDDEN_POOL
    if _split_current(root, "coda_lm", "Unlabeled", h, [hidden] + [root / POOL_DIR / f for f in names]):
        return {"samples": n, "skipped": True, "seconds": 0.0}
    t0 = time.perf_counter()
    side = []
    for i in tqdm(range(n), desc="toy unlabeled pool", disable=not progress):
        g = sample_scene(seed, "coda:Unlabeled", i, balance, ccr)
        img, objs = render_scene(g, W, H)
        _save_jpeg(img, root / POOL_DIR / names[i], q)
        side.append({"file_name": names[i], "graph": g, "objects": [{**o, "category_name": _REGION_NAME[o["kind"]]}
                                                                    for o in objs],
                     "annotation": coda_annotation(g, objs)})
    write_jsonl(hidden, side)
    _mark_split(root, "coda_lm", "Unlabeled", h, {"samples": n, "settings": settings})
    return {"samples": n, "skipped": False, "seconds": round(time.perf_counter() - t0, 3)}


# --- readers for the tiny models' pretraining ---------------------------------------------------

def load_captions(root: str | os.PathLike, split: str) -> dict[str, str]:
    """file_name -> generic caption, from the toy sidecar `<root>/toy/scenes_<split>.jsonl`."""
    path = Path(root) / "toy" / f"scenes_{split}.jsonl"
    if not path.exists():
        raise DataError(f"{path}: missing; captions exist only for toy-world data (generate it with notebook 00)")
    out = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        if "file_name" not in rec or "caption" not in rec:
            raise DataError(f"{path}:{i}: expected fields 'file_name' and 'caption'")
        out[rec["file_name"]] = rec["caption"]
    return out


def text_corpus(root: str | os.PathLike) -> list[str]:
    """Every text the toy world writes (captions, answers, CODA-LM texts, label and prompt texts),
    for training the tiny tokenizer. `root` is a toy BDD-OIA or CODA-LM root, or a folder holding
    them (e.g. run_dir/prepare/data)."""
    root = Path(root)
    texts: list[str] = list(ACTION_TEXTS) + list(REASONS) + [ANSWER_PROMPT, DESCRIBE_PROMPT, ACTION_PROMPT]
    sidecars = sorted(root.glob("toy/scenes_*.jsonl")) + sorted(root.glob("*/toy/scenes_*.jsonl"))
    if not sidecars:
        raise DataError(f"{root}: no toy/scenes_<split>.jsonl found; expected a toy-world root (run notebook 00)")
    for sc in sidecars:
        for rec in read_jsonl(sc):
            texts.append(rec["caption"])
            if "actions" in rec:
                texts.append(format_answer(rec["actions"], rec["reasons"]))
                texts.append(format_action_answer(rec["actions"]))
            if "json" in rec:
                p = sc.parent.parent / rec["json"]
                if p.exists():
                    d = json.loads(p.read_text())
                    gp = d["general_perception"]
                    for k in GENERAL_KEYS:
                        for item in gp.get(k, []):
                            texts += [item["description"], item["explanation"]]
                    texts.append(gp["description and explanation"])
                    texts += [r["description and explanation"] for r in d["region_perception"].values()]
                    texts.append(d["driving_suggestion"])
    return texts
