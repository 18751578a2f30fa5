"""The texts of a toy-world scene graph (kit.data.scenes): a generic caption that does not state the
action (for pretraining the tiny models), the driving suggestion, and CODA-LM's annotation texts."""
from __future__ import annotations

import json
import random
from typing import Any, Mapping

from kit.data.scenes import labels

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
REGION_NAME = {"car": "car", "truck": "truck", "pedestrian": "pedestrian", "rider": "cyclist", "cone": "traffic_cone",
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
                           "category_name": REGION_NAME[o["kind"]]}
    gp["description and explanation"] = caption(g) + " " + ("This is an unusual scene with a corner-case object. "
                                                            if g.get("corner_case") else "")
    gp["description and explanation"] = gp["description and explanation"].strip()
    return {"general_perception": gp, "region_perception": regions, "driving_suggestion": driving_suggestion(g)}
