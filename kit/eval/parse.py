"""Free text -> BDD-OIA labels: 4 actions and 21 reasons, parsed from what a VLM writes.

The paper's format is `Action: stop. Reason: Traffic light is not green.`, but models write any
case and punctuation, several actions or reasons, synonyms ("slow down", "go straight", "red
light", "pedestrian crossing"), reasons without an action and the reverse. No library maps driving
phrases to BDD-OIA's labels, so this is a hand-written table of word-boundary regexes per label
(built from kit.labels' texts), applied with these rules:

1. Text is lower-cased and punctuation becomes spaces, so "Obstacle: car", "obstacle - car" and
   "OBSTACLE CAR" read the same.
2. Sections: `action(s):` starts the action section; `reason(s):`, `explanation:`, `because`,
   `due to` start the reason section. Actions are read from the action section when there is one,
   else from the text outside the reason section, else from the whole text. Reasons are read from
   the reason section when there is one, else from the whole text.
3. Longest / most specific phrase first, and every match is blanked out before weaker patterns run:
   "traffic light is not green" is matched (reason 3) before "traffic light is green" (reason 0)
   can see it, "front car turning left" (reason 14) before "turning left" (action left), "stop
   sign" (reason 4) before "stop" (action stop).
4. Negations. BDD-OIA's own negative reasons ("no lane on the left", "traffic light is not
   green") are phrases of their own. Elsewhere a negation in front of a phrase ("do not turn
   left", "no pedestrians", "cannot go straight") blanks it without giving a label; "no obstacles"
   / "nothing ahead" is "Road is clear".
5. Bare direction words ("left", "right", "straight") count as actions only inside an explicit
   action section; elsewhere they are too often part of a place ("the car on the left").
6. `none` in a section is an explicit empty answer. Text that names no action, no reason and no
   `none` is `unparseable`: its vectors stay all zero (counted, never guessed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable

from kit.labels import N_ACTIONS, N_REASONS

# Negation words that, right before a phrase (within NEG_WINDOW words), cancel it.
_NEG = r"(?:not|no|never|don t|do not|dont|cannot|can t|cant|shouldn t|should not|must not|mustn t|without|isn t|aren t|won t|nor)"
NEG_WINDOW = 3

# Shared sub-patterns (text is already lower-case, punctuation -> spaces, single spaces).
_LIGHT = r"(?:traffic light|traffic lights|traffic signal|traffic signals|light|lights|signal|signals|stoplight|stop light)"
_CAR = r"(?:car|cars|vehicle|vehicles|truck|trucks|bus|buses|van|vans|suv|taxi)"
_PERSON = r"(?:person|persons|people|pedestrian|pedestrians|walker|walkers|man|woman|child|children|kid|kids|crowd)"
_RIDER = r"(?:rider|riders|cyclist|cyclists|bicyclist|bicyclists|bicycle|bicycles|bike|bikes|motorcyclist|motorcyclists|motorbike|motorbikes|motorcycle|motorcycles|scooter|scooters)"
_OTHER = r"(?:others|other|other obstacles|other obstacle|object|objects|debris|cone|cones|traffic cone|traffic cones|barrier|barriers|animal|animals|construction)"
_ON = r"(?:on|in|to|at|into)"
_THE = r"(?:the |a |my |our )?"
_FRONT = r"(?:front car|car in front|car ahead|vehicle in front|vehicle ahead|leading car|lead car|lead vehicle|leading vehicle|car before us|car in front of us|front vehicle|preceding car|preceding vehicle)"
_BE = r"(?:is |are |was |)"


def _side(side: str) -> dict[int, list[str]]:
    """Reason patterns for one side; `side` is left or right. Indices are BDD-OIA's."""
    s = side
    base = 9 if s == "left" else 15
    return {
        # no lane / why-not reasons
        base: [rf"no (?:lane|lanes|road|room|space|way) {_ON} {_THE}{s}(?: side)?",
               rf"no {s} (?:lane|lanes|turn lane)", rf"there is no {s} lane",
               rf"{s} lane does not exist", rf"no {s} turn (?:possible|allowed)"],
        base + 1: [rf"(?:obstacle|obstacles|{_CAR}|{_PERSON}|{_RIDER}|traffic|something|objects?)(?: is| are)? {_ON} {_THE}{s} lane",
                   rf"{s} lane (?:is |are )?(?:blocked|occupied|busy|full|not clear|congested)",
                   rf"obstacles? {_ON} {_THE}{s}(?: side)?", rf"{s} lane obstacles?",
                   rf"blocked {_ON} {_THE}{s}"],
        base + 2: [rf"solid (?:white |yellow |double |lane |)lines?(?: is| are)? {_ON} {_THE}{s}(?: side)?",
                   rf"{s} solid lines?", rf"solid {s} lines?", rf"solid lines? {s}",
                   rf"double (?:yellow |white |)lines? {_ON} {_THE}{s}"],
        # why reasons
        base + 3: [rf"{_ON} {_THE}{s} turn(?:ing)?(?: only)? lane", rf"{s} turn(?:ing)?(?: only)? lane",
                   rf"{s} (?:turn )?arrow (?:is )?(?:painted|marked|drawn)", rf"{s} (?:turn )?arrow (?:is )?on the (?:ego |our |my |)(?:lane|road)",
                   rf"{s} only lane", rf"lane for turning {s}", rf"{s} turning lane"],
        base + 4: [rf"{_LIGHT} (?:allows|allowing|allow|permits|lets us|lets you|lets) (?:to )?(?:turn(?:ing)? |go(?:ing)? |)(?:to the )?{s}",
                   rf"(?:green )?{s} (?:turn )?arrow(?: is green| is on|)", rf"green arrow (?:to the |pointing |for )?{s}",
                   rf"{s} turn (?:signal|light|arrow) is green", rf"{s} turn (?:is )?(?:allowed|permitted) by the (?:light|signal)"],
        base + 5: [rf"{_FRONT} {_BE}(?:turning|turns|turn|is turning|about to turn|signaling|indicating) (?:to the )?{s}",
                   rf"(?:car|vehicle) ahead {_BE}turning {s}", rf"cars? (?:ahead |in front |)turning {s}"],
    }


# Reason patterns, most specific first within a label; _ORDER decides the order across labels.
REASON_PATTERNS: dict[int, list[str]] = {
    3: [rf"{_LIGHT}(?: [a-z]+){{0,4}} (?:shows|showing|displays|displaying|glows|glowing) (?:solid |a |)(?:red|yellow|amber|orange)",
        rf"{_LIGHT} {_BE}not green", rf"{_LIGHT} (?:isn t|is not|not) green", r"not a green light",
        rf"red {_LIGHT}", rf"(?:yellow|amber|orange) {_LIGHT}", rf"{_LIGHT} {_BE}(?:red|yellow|amber|orange)",
        rf"{_LIGHT} turn(?:ed|s|ing)? (?:red|yellow|amber)", r"red signal", r"\bred\b(?= (?:ahead|now))"],
    0: [rf"{_LIGHT}(?: [a-z]+){{0,4}} (?:shows|showing|displays|displaying|glows|glowing) (?:solid |a |)green(?! (?:left|right))",
        rf"{_LIGHT} {_BE}green", rf"green {_LIGHT}", rf"{_LIGHT} turn(?:ed|s|ing)? green",
        r"green signal", r"light allows (?:us )?to (?:go|proceed|move)"],
    4: [r"(?:traffic|stop|yield|road|warning|speed limit|give way|no entry|regulatory) signs?", r"stop signs?",
        r"signage"],
    1: [rf"{_CAR} (?:is |are )?(?:far|well|some distance) ahead", r"follow(?:ing|s)? (?:the )?(?:traffic|flow|car in front|car ahead|vehicle ahead|vehicle in front|leading car|lead car|front car|cars? ahead)",
        r"traffic (?:is )?(?:flowing|moving)", r"flow of traffic", r"traffic flow", r"keep(?:ing)? (?:up )?with (?:the )?traffic",
        r"move with (?:the )?traffic", r"moving with (?:the )?traffic"],
    2: [r"(?<!left )(?<!right )(?:road|way|path|street|lane|route) (?:ahead |in front )?(?:is |looks |seems )?(?:clear|free|empty|open)",
        r"clear (?:road|way|path|street|lane)", r"nothing (?:blocks|is blocking|obstructs)", r"(?:empty|open|free) (?:road|street)", r"nothing (?:ahead|in front|in the way)",
        r"no (?:obstacles?|obstructions?|traffic|cars?|vehicles?)(?: ahead| in front| in the way)?(?! (?:on|in|to) (?:the )?(?:left|right))",
        r"(?:it is|it s) clear", r"all clear"],
    5: [rf"obstacle {_CAR}", rf"{_CAR} (?:in front|ahead|blocking|stopped|stopping|braking|parked|slowing)",
        rf"(?:stopped|parked|slow|slowing|braking|blocking|leading|front) {_CAR}", rf"{_CAR} in the way",
        r"traffic jam", r"congestion", r"heavy traffic"],
    6: [rf"obstacle {_PERSON}", rf"{_PERSON} crossing", rf"crossing {_PERSON}", r"pedestrian crossing", r"crosswalk",
        r"zebra crossing"],
    7: [rf"obstacle {_RIDER}"],
    8: [rf"obstacle {_OTHER}", r"obstacles? other", rf"{_OTHER}(?= (?:ahead|in front|on the road|in the way|blocking))",
        r"roadwork", r"road work", r"road works"],
}
# Bare nouns, tried only after every specific phrase of every label (so "traffic light is green"
# is reason 0 before the bare "traffic light" of reason 3 can see it, "car in front turning left"
# is reason 14 before the bare "car" of reason 5 can).
REASON_FALLBACK: dict[int, list[str]] = {
    3: [r"(?:traffic lights?|traffic signals?|stoplights?|stop lights?)(?! (?:is |are )?green)"],
    4: [r"signs?"],
    6: [_PERSON],
    7: [_RIDER],
    5: [_CAR],
    8: [r"obstacles?", r"construction", _OTHER],
}
for _s in ("left", "right"):
    REASON_PATTERNS.update(_side(_s))

# Order across labels: side-specific phrases first (they contain "left"/"right", "traffic light",
# "car"), then the lights (3 before 0 because of "not green"), signs, follow/clear, obstacles.
_REASON_ORDER = [14, 20, 12, 18, 13, 19, 9, 15, 11, 17, 10, 16, 3, 0, 4, 1, 2, 6, 7, 5, 8]
assert sorted(_REASON_ORDER) == list(range(N_REASONS))

ACTION_PATTERNS: dict[int, list[str]] = {
    2: [r"turn(?:s|ing|ed)? (?:to the )?left", r"left turn", r"(?:go|goes|going|veer|veering|steer|steering|bear|head|heading|move|moving) (?:to the )?left",
        r"chang(?:e|ing) lanes? (?:to the )?left", r"merg(?:e|ing) (?:to the )?left", r"make a left", r"take a left", r"hang a left"],
    3: [r"turn(?:s|ing|ed)? (?:to the )?right", r"right turn", r"(?:go|goes|going|veer|veering|steer|steering|bear|head|heading|move|moving) (?:to the )?right",
        r"chang(?:e|ing) lanes? (?:to the )?right", r"merg(?:e|ing) (?:to the )?right", r"make a right", r"take a right", r"hang a right"],
    1: [r"slow(?:s|ing|ed)? down", r"\bslow(?:er|ly)?\b", r"\bstop(?:s|ping|ped)?\b", r"come to a (?:complete )?(?:stop|halt)",
        r"\bbrak(?:e|es|ing)\b", r"\bhalt(?:s|ing)?\b", r"\byield(?:s|ing)?\b", r"\bwait(?:s|ing)?\b", r"decelerat(?:e|es|ing)",
        r"reduce (?:the )?speed", r"give way", r"stay (?:put|still|stopped)", r"remain (?:stopped|still)", r"hold (?:position|still)"],
    0: [r"(?:move|moves|moving|go|goes|going|drive|drives|driving|head|heading|keep|keeps|keeping|continue|continues|continuing|proceed|proceeds|proceeding|carry) (?:on )?(?:straight|forward|forwards|ahead|on)",
        r"straight ahead", r"\bforwards?\b", r"\bstraight\b", r"\bproceed(?:s|ing)?\b", r"\bcontinu(?:e|es|ing)\b", r"keep (?:going|driving|moving)",
        r"accelerat(?:e|es|ing)", r"speed up", r"\bgo\b", r"\bdrive on\b", r"\badvance\b"],
}
_ACTION_ORDER = [2, 3, 1, 0]
# Only inside an explicit action section: the bare directions (and "none").
_BARE_ACTION = {2: [r"\bleft\b"], 3: [r"\bright\b"], 0: [r"\bahead\b"]}

_NONE = r"\b(?:none|nothing|no action|no reason|n a)\b"
_ACTION_MARK = re.compile(r"\b(?:actions?|decisions?|next action(?: is)?|the action is)\s*[:=\-]|\baction\s+is\b|\bactions?\s+(?=\w)")
_REASON_MARK = re.compile(r"\b(?:reasons?|explanations?|justifications?|why)\s*[:=\-]|\bbecause(?: of)?\b|\bdue to\b|\bsince\b|\breasons?\s+(?=\w)")


@dataclass
class Parsed:
    actions: list[int] = field(default_factory=lambda: [0] * N_ACTIONS)
    reasons: list[int] = field(default_factory=lambda: [0] * N_REASONS)
    unparseable: bool = True
    action_found: bool = False   # an action (or an explicit "none") was named
    reason_found: bool = False   # a reason (or an explicit "none") was named


def _normalize(text: str) -> str:
    t = text.lower().replace("’", "'").replace("\u2019", "'")
    t = re.sub(r"[.,;!?\n]+", " | ", t)  # clause boundaries end a negation's scope and a phrase
    t = re.sub(r"[^a-z0-9:|]+", " ", t)  # keep ':' for section markers; it is stripped per section
    return re.sub(r"\s+", " ", t).strip()


def _clean(section: str) -> str:
    return " " + re.sub(r"\s+", " ", section.replace(":", " ")).strip() + " "


def _compile(table: dict[int, list[str]]) -> dict[int, list[re.Pattern]]:
    return {k: [re.compile(rf"(?<![a-z0-9]){p}(?![a-z0-9])") for p in v] for k, v in table.items()}


# The ego vehicle as a sentence's subject ("the car should stop") is no obstacle: blanked first.
EGO_PATTERNS = [r"(?:the |our |my |this |ego |)(?:ego )?(?:car|vehicle)(?= (?:should|must|will|can|cannot|can t|needs|need|has|have|is going|would|may|might|ought|shall)\b)",
                r"ego (?:car|vehicle)"]
_EGO = _compile({-1: EGO_PATTERNS})
_R = _compile(REASON_PATTERNS)
_RF = _compile(REASON_FALLBACK)
_A = _compile(ACTION_PATTERNS)
_BARE = _compile(_BARE_ACTION)
# Only plain words may stand between the negation and the phrase: a clause boundary ("|") or an
# earlier match ("#") ends the negation's scope ("do not turn left | stop" -> stop).
_NEG_RE = re.compile(rf"(?:^|\s){_NEG}(?:\s+[a-z0-9]+){{0,{NEG_WINDOW - 1}}}\s*$")
_NONE_RE = re.compile(_NONE)


def _negated(text: str, start: int) -> bool:
    """A negation word within NEG_WINDOW words before position `start`."""
    return bool(_NEG_RE.search(text[:start]))


def _match(text: str, compiled: dict[int, list[re.Pattern]], order: Iterable[int],
           negatable: bool = True) -> tuple[set[int], str]:
    """Labels whose patterns occur in `text`; every match is blanked (negated ones too)."""
    found: set[int] = set()
    order = [k for k in order if k in compiled]
    for label in order:
        for pat in compiled.get(label, []):
            while True:
                m = pat.search(text)
                if not m:
                    break
                if not (negatable and _negated(text, m.start())):
                    found.add(label)
                text = text[:m.start()] + "#" * (m.end() - m.start()) + text[m.end():]
    return found, text


def _reasons(text: str) -> tuple[set[int], str]:
    _, text = _match(text, _EGO, [-1], negatable=False)
    found, text = _match(text, _R, _REASON_ORDER)
    more, text = _match(text, _RF, [3, 4, 6, 7, 5, 8])
    return found | more, text


def _sections(t: str) -> tuple[str | None, str | None, str]:
    """(action section, reason section, text outside the reason section)."""
    marks = [(m.start(), m.end(), "a") for m in _ACTION_MARK.finditer(t)]
    marks += [(m.start(), m.end(), "r") for m in _REASON_MARK.finditer(t)]
    marks.sort()
    if not marks:
        return None, None, t
    action, reason, outside = [], [], [t[:marks[0][0]]]
    for i, (s, e, kind) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(t)
        (action if kind == "a" else reason).append(t[e:end])
        if kind == "a":
            outside.append(t[e:end])
    return (" ".join(action) if action else None, " ".join(reason) if reason else None, " ".join(outside))


def parse_answer(text: str | None) -> Parsed:
    """Parse a model's answer into BDD-OIA's 4 action and 21 reason labels (see module doc).

    >>> p = parse_answer("Action: stop. Reason: Traffic light is not green.")
    >>> p.actions, p.reasons.index(1), p.unparseable
    ([0, 1, 0, 0], 3, False)
    """
    out = Parsed()
    if not text or not str(text).strip():
        return out
    t = _normalize(str(text))
    action_sec, reason_sec, outside = _sections(t)

    # Reasons: from the reason section if any, else from everything.
    r_text = _clean(reason_sec if reason_sec is not None else t)
    reasons, r_rest = _reasons(r_text)
    for i in reasons:
        out.reasons[i] = 1
    reason_none = reason_sec is not None and not reasons and bool(_NONE_RE.search(r_rest))
    out.reason_found = bool(reasons) or reason_none

    # Actions: from the action section; else the text outside the reason section; else all text.
    # Reason phrases are blanked first so "stop sign" or "front car turning left" give no action.
    if action_sec is not None:
        a_src = action_sec
    elif reason_sec is not None:
        a_src = outside
    else:
        a_src = t
    _, a_text = _reasons(_clean(a_src))
    actions, a_rest = _match(a_text, _A, _ACTION_ORDER)
    if action_sec is not None:
        bare, a_rest = _match(a_rest, _BARE, [2, 3, 0])
        actions |= bare
    for i in actions:
        out.actions[i] = 1
    action_none = action_sec is not None and not actions and bool(_NONE_RE.search(a_rest))
    out.action_found = bool(actions) or action_none

    out.unparseable = not (out.action_found or out.reason_found)
    return out
