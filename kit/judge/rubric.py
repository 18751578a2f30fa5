"""The offline judge: no model, a fixed rubric that answers in an LLM judge's own form.

It reads which objects of CODA's seven classes a text names (with their colour and position where
given) and what it advises the ego car to do, compares prediction with reference on the criteria
CODA-LM's judge prompts state (objects found, objects invented, the same advice and explanation),
and answers `<reasons> Rating: [[N]]` (pairwise: `[[A]]`, `[[B]]` or `[[C]]`). It stands in for the
LLM where none is at hand (the tiny profile, tests); a real evaluation uses the `openai` backend.
Its ratings follow correctness on the toy world (kit.judge.validity measures that).

The reading is lexical on purpose: it knows CODA-LM's vocabulary and nothing about images, so a
prediction can only score by saying the same things as the reference.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from kit.judge.base import Judge
from kit.judge.request import JudgeRequest

# word -> (class, canonical noun); multiword phrases first (they are matched before single words)
_LEXICON: dict[str, tuple[str, str]] = {}
for cls, words in {
    "vehicle": ["car", "cars", "truck", "trucks", "bus", "buses", "van", "vans", "suv", "vehicle", "vehicles",
                "tram", "trailer", "tricycle", "taxi", "sedan", "jeep", "lorry"],
    "vru": ["pedestrian", "pedestrians", "person", "people", "cyclist", "cyclists", "bicycle", "bike",
            "motorcyclist", "motorcycle", "rider", "scooter", "moped", "wheelchair", "stroller", "child", "walker"],
    "traffic_sign": ["stop sign", "speed limit sign", "warning sign", "traffic sign", "sign", "signs"],
    "traffic_light": ["traffic light", "traffic lights", "arrow lamp", "signal", "lamp"],
    "traffic_cone": ["traffic cone", "traffic cones", "cone", "cones"],
    "barrier": ["road works", "roadworks", "road work", "barrier", "barriers", "bollard", "bollards", "barricade",
                "fence"],
    "miscellaneous": ["debris", "animal", "dog", "cat", "stone", "stones", "rock", "rocks", "tire", "tyre",
                      "garbage", "dustbin", "box", "boxes", "bag"],
}.items():
    for w in words:
        noun = w.split()[-1].rstrip("s") if w not in ("bus", "buses") else "bus"
        _LEXICON[w] = (cls, {"ston": "stone", "rock": "rock", "boxe": "box", "bu": "bus"}.get(noun, noun))
_PHRASES = sorted(_LEXICON, key=lambda w: -len(w))
_PHRASE_RE = re.compile(r"\b(" + "|".join(re.escape(p) for p in _PHRASES) + r")\b")
COLOURS = ("red", "green", "yellow", "amber", "orange", "blue", "white", "black", "silver", "grey", "gray", "purple",
           "teal", "brown", "magenta", "cyan", "pink")
_COLOUR_RE = re.compile(r"\b(" + "|".join(COLOURS) + r")\b")

# what the text advises the ego car (negations first: "do not move left" is not "move left")
_ADVICE = [
    ("not_left", r"\b(?:do not|don't|should not|must not|cannot|can't|never)\b[^.;]*\bleft\b|\bleft lane\b[^.;]*\b(?:occupied|blocked|closed)\b"),
    ("not_right", r"\b(?:do not|don't|should not|must not|cannot|can't|never)\b[^.;]*\bright\b|\bright lane\b[^.;]*\b(?:occupied|blocked|closed)\b"),
    ("stop", r"\b(?:stop|stops|stopping|slow down|slows down|brake|braking|yield|halt|wait)\b"),
    ("forward", r"\b(?:keep moving forward|move forward|moving forward|go ahead|proceed|continue|keep going|follow the traffic|follow the car|follow)\b"),
    ("turn_left", r"\bturn(?:ing)? left\b|\bleft turn\b|\bleft-turn\b"),
    ("turn_right", r"\bturn(?:ing)? right\b|\bright turn\b|\bright-turn\b"),
]
_ADVICE_RE = [(k, re.compile(p)) for k, p in _ADVICE]
_SENT_RE = re.compile(r"(?<=[.!?;])\s+")


@dataclass(frozen=True)
class Mention:
    cls: str
    noun: str
    colour: str | None
    position: str | None


@dataclass
class Reading:
    objects: list[Mention] = field(default_factory=list)
    advice: set[str] = field(default_factory=set)

    def classes(self) -> Counter:
        return Counter(m.cls for m in self.objects)


def _position(sentence: str) -> str | None:
    for pos, pat in (("left", r"\bleft (?:lane|side)\b|\bon the left\b"), ("right", r"\bright (?:lane|side)\b|\bon the right\b"),
                     ("ahead", r"\bahead\b|\bego lane\b|\bin front\b|\bsame lane\b|\bin the lane\b")):
        if re.search(pat, sentence):
            return pos
    return None


def _add(r: Reading, seen: set, m: Mention) -> None:
    # one object per (class, noun, colour, position): a text that names the same car twice names one car
    key = (m.cls, m.noun, m.colour, m.position)
    if m.cls == "traffic_light":
        key = (m.cls,)  # a scene has one traffic light; "the light is not green" is the same one
    if key not in seen:
        seen.add(key)
        r.objects.append(m)


def read_text(text: str) -> Reading:
    """The objects (class, noun, colour, position) and the advice a text states."""
    # "the ego car" is the viewer, not an object of the scene
    text = re.sub(r"\bego[- ](?:car|vehicle)\b", "ego", (text or "").lower())
    r = Reading()
    seen = set()
    for sent in _SENT_RE.split(text):
        pos = _position(sent)
        for m in _PHRASE_RE.finditer(sent):
            phrase = m.group(1)
            # "light" alone is too vague ("the light is green" names the traffic light, though): count
            # "light" only with a colour next to it
            cls, noun = _LEXICON[phrase]
            col = _COLOUR_RE.findall(sent[max(0, m.start() - 24):m.start()])
            if cls == "traffic_light" and not col:  # a light's colour follows it: "the light shows red"
                col = _COLOUR_RE.findall(sent[m.end():m.end() + 40])[:1]
            _add(r, seen, Mention(cls, noun, col[-1] if col else None, pos))
        # "the light is green" names the traffic light too; a bare "light" counts only with a colour
        if re.search(r"\blight\b", sent) and _COLOUR_RE.search(sent):
            _add(r, seen, Mention("traffic_light", "light", _COLOUR_RE.search(sent).group(1), pos))
        for key, rx in _ADVICE_RE:
            if rx.search(sent):
                if key in ("turn_left", "turn_right") and re.search(r"\b(?:do not|don't|should not|must not|cannot)\b", sent):
                    continue
                r.advice.add(key)
    return r


def _agree(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def _match(ref: list[Mention], pred: list[Mention]) -> tuple[int, float, list[Mention], list[Mention]]:
    """Greedy one-to-one matching by class, preferring pairs that agree on noun, colour and position.
    Returns (matched, attribute agreement of the matched pairs, missed reference objects, invented ones)."""
    free = list(pred)
    matched, attr, missed = 0, 0.0, []
    for o in ref:
        cands = [p for p in free if p.cls == o.cls]
        if not cands:
            missed.append(o)
            continue
        def score(p: Mention) -> float:
            return (p.noun == o.noun) + (o.colour is None or p.colour == o.colour) + (o.position is None or p.position == o.position)
        best = max(cands, key=score)
        free.remove(best)
        matched += 1
        attr += score(best) / 3
    return matched, (attr / matched if matched else 0.0), missed, free


def rate(task: str, reference: str, prediction: str) -> tuple[float, str]:
    """(score in [0, 1], a short explanation) of `prediction` against `reference`."""
    R, Q = read_text(reference), read_text(prediction)
    matched, attr, missed, invented = _match(R.objects, Q.objects)
    recall = matched / len(R.objects) if R.objects else (1.0 if not Q.objects else 0.0)
    precision = matched / len(Q.objects) if Q.objects else (1.0 if not R.objects else 0.0)
    f1 = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    if not R.objects and not Q.objects:
        attr = 1.0  # nothing to describe on either side: they agree
    advice = _agree(R.advice, Q.advice)
    if task == "driving_suggestion":
        s = 0.6 * advice + 0.4 * f1
    elif task == "region_perception":
        first_r = R.objects[0] if R.objects else None
        first_q = Q.objects[0] if Q.objects else None
        same_cls = float(bool(first_r and first_q and first_r.cls == first_q.cls)) if first_r else float(first_q is None)
        same_noun = float(bool(first_r and first_q and first_r.noun == first_q.noun)) if first_r else same_cls
        s = 0.35 * same_cls + 0.1 * same_noun + 0.2 * attr + 0.35 * advice
    else:
        s = 0.6 * f1 + 0.15 * attr + 0.25 * advice
    why = (f"The reference names {len(R.objects)} object(s); the prediction finds {matched}, misses "
           f"{len(missed)}{' (' + ', '.join(sorted({m.noun for m in missed})) + ')' if missed else ''} and adds "
           f"{len(invented)} not in the reference{' (' + ', '.join(sorted({m.noun for m in invented})) + ')' if invented else ''}. "
           f"Advice: reference {sorted(R.advice) or 'none'}, prediction {sorted(Q.advice) or 'none'}.")
    return max(0.0, min(1.0, s)), why


def rating_of(score: float) -> int:
    return int(max(1, min(10, 1 + round(9 * score))))


class RubricJudge(Judge):
    backend = "rubric"
    model = "rubric-v1"
    cacheable = False

    def __init__(self, prompts=None, tie_margin: float = 0.05):
        super().__init__(prompts=prompts, cache=None, concurrency=1, reask=0)
        self.tie_margin = float(tie_margin)

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "tie_margin": self.tie_margin}

    def _ask(self, messages, request: JudgeRequest) -> tuple[str, dict]:
        if request.kind == "rate":
            s, why = rate(request.task, request.reference, request.prediction)
            return f"{why} Rating: [[{rating_of(s)}]]", {}
        sa, why_a = rate(request.task, request.reference, request.answer_a)
        sb, why_b = rate(request.task, request.reference, request.answer_b)
        v = "C" if abs(sa - sb) < self.tie_margin else ("A" if sa > sb else "B")
        return f"Assistant A: {why_a} Assistant B: {why_b} [[{v}]]", {}
