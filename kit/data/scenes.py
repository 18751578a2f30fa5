"""Toy-world scenes: a scene graph sampled from (seed, split, index) and its BDD-OIA labels.

A scene is a scene graph (a JSON-able dict, below); `labels(graph)` turns it into BDD-OIA's
4 actions and 21 reasons (kit.data.scene_text writes its texts, kit.data.render draws it).

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
import random
from typing import Any, Mapping

from kit.data import DataError
from kit.labels import N_REASONS

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
