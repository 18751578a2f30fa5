"""The answer parser against a table of phrasings: the paper's format and what models write."""
import pytest

from kit.eval.parse import parse_answer
from kit.labels import ACTIONS, N_ACTIONS, N_REASONS, REASONS, format_answer

F, S, L, R = "forward", "stop", "left", "right"
# reason indices by a short name
RN = {"green": 0, "follow": 1, "clear": 2, "notgreen": 3, "sign": 4, "car": 5, "person": 6,
      "rider": 7, "others": 8, "nolane_l": 9, "obst_l": 10, "solid_l": 11, "turnlane_l": 12,
      "allows_l": 13, "front_l": 14, "nolane_r": 15, "obst_r": 16, "solid_r": 17,
      "turnlane_r": 18, "allows_r": 19, "front_r": 20}

# (text, expected actions, expected reasons); None = text names nothing (unparseable)
CASES = [
    # the paper's own format
    ("Action: stop. Reason: Traffic light is not green.", {S}, {"notgreen"}),
    ("Action: move forward. Reason: Traffic light is green.", {F}, {"green"}),
    ("Action: turn left. Reason: On the left-turn lane.", {L}, {"turnlane_l"}),
    ("Action: turn right. Reason: Traffic light allows to turn right.", {R}, {"allows_r"}),
    ("Action: stop. Reason: Obstacle: car; Obstacle: person.", {S}, {"car", "person"}),
    ("Action: move forward, turn left. Reason: Road is clear; Front car turning left.", {F, L}, {"clear", "front_l"}),
    ("Action: stop. Reason: Obstacle: rider.", {S}, {"rider"}),
    ("Action: stop. Reason: Obstacle: others.", {S}, {"others"}),
    ("Action: move forward. Reason: Follow traffic.", {F}, {"follow"}),
    ("Action: stop. Reason: Traffic sign.", {S}, {"sign"}),
    ("Action: move forward. Reason: No lane on the left; Solid line on the right.", {F}, {"nolane_l", "solid_r"}),
    ("Action: move forward. Reason: Obstacles on the left lane; Obstacles on the right lane.", {F}, {"obst_l", "obst_r"}),
    ("Action: turn right. Reason: On the right-turn lane; Front car turning right.", {R}, {"turnlane_r", "front_r"}),
    ("Action: turn left. Reason: Traffic light allows to turn left.", {L}, {"allows_l"}),
    ("Action: move forward. Reason: Solid line on the left; No lane on the right.", {F}, {"solid_l", "nolane_r"}),
    # case and punctuation
    ("ACTION: STOP. REASON: TRAFFIC LIGHT IS NOT GREEN", {S}, {"notgreen"}),
    ("action - stop ; reason - traffic light is not green !!", {S}, {"notgreen"}),
    ("action:stop reason:traffic light is not green", {S}, {"notgreen"}),
    ("Action: Stop/Slow down. Reason: Obstacle - car", {S}, {"car"}),
    ("Action: turn_left. Reason: left_turn lane", {L}, {"turnlane_l"}),
    # synonyms for actions
    ("Action: slow down. Reason: pedestrian crossing.", {S}, {"person"}),
    ("Action: go straight. Reason: the road is clear.", {F}, {"clear"}),
    ("Action: brake. Reason: red light.", {S}, {"notgreen"}),
    ("Action: forward.", {F}, set()),
    ("Action: left", {L}, set()),
    ("Action: right.", {R}, set()),
    ("Action: halt", {S}, set()),
    ("The car should proceed straight ahead.", {F}, set()),
    ("We should keep going because the light is green.", {F}, {"green"}),
    ("Make a left turn.", {L}, set()),
    ("The vehicle should yield.", {S}, set()),
    ("Continue driving.", {F}, set()),
    ("Decelerate and stop.", {S}, set()),
    # synonyms for reasons
    ("Stop because of the red traffic light.", {S}, {"notgreen"}),
    ("Stop: the light turned yellow.", {S}, {"notgreen"}),
    ("Stop, there is a stop sign.", {S}, {"sign"}),
    ("Slow down, a cyclist is ahead.", {S}, {"rider"}),
    ("Stop for the pedestrians in the crosswalk.", {S}, {"person"}),
    ("Brake, the car in front is braking.", {S}, {"car"}),
    ("Go forward, following the car ahead.", {F}, {"follow"}),
    ("Drive on, nothing ahead.", {F}, {"clear"}),
    ("Action: stop. Reason: construction cones ahead.", {S}, {"others"}),
    ("Turn left: the green left arrow is on.", {L}, {"allows_l"}),
    ("Turn right because the car ahead is turning right.", {R}, {"front_r"}),
    ("Reason: a truck is blocking the road.", set(), {"car"}),
    ("Reason: there is a solid white line on the left.", set(), {"solid_l"}),
    ("Reason: cars on the right lane.", set(), {"obst_r"}),
    ("Reason: we are in the right turn lane.", set(), {"turnlane_r"}),
    # negations where BDD-OIA's reasons are themselves negative, and negated phrases
    ("Reason: the traffic light is not green.", set(), {"notgreen"}),
    ("Reason: the traffic light isn't green.", set(), {"notgreen"}),
    ("Reason: the traffic light is green.", set(), {"green"}),
    ("Reason: there is no lane on the left.", set(), {"nolane_l"}),
    ("Reason: no lane to the right side.", set(), {"nolane_r"}),
    ("Do not turn left; stop.", {S}, set()),
    ("Don't move forward. Reason: pedestrian crossing.", set(), {"person"}),
    ("Move forward, there are no pedestrians.", {F}, set()),
    ("Move forward: no obstacles ahead.", {F}, {"clear"}),
    ("The car cannot turn right because of the solid line on the right.", set(), {"solid_r"}),
    # reasons without an action and the reverse
    ("Reason: Traffic light is not green.", set(), {"notgreen"}),
    ("Action: stop.", {S}, set()),
    ("stop", {S}, set()),
    ("red light", set(), {"notgreen"}),
    # several actions / reasons in free order
    ("Reason: road is clear. Action: move forward and turn right.", {F, R}, {"clear"}),
    ("Action: go straight or turn left. Reason: traffic light is green; on the left turn lane.", {F, L}, {"green", "turnlane_l"}),
    # reason phrases must not leak into actions
    ("Reason: Front car turning left.", set(), {"front_l"}),
    ("There is a stop sign ahead.", set(), {"sign"}),
    ("Action: stop. Reason: the car ahead is turning left.", {S}, {"front_l"}),
    # scene descriptions (what a captioning model writes)
    ("A traffic light above the road shows green. Nothing blocks the ego lane.", set(), {"green", "clear"}),
    ("A traffic light above the road shows yellow, with a green left arrow.", set(), {"notgreen", "allows_l"}),
    ("A purple car is in the left lane. A solid yellow line is on the right.", set(), {"obst_l", "solid_r"}),
    ("A white right arrow is painted on the ego lane.", set(), {"turnlane_r"}),
    ("A black car is far ahead in the same lane.", set(), {"follow"}),
    ("A teal car is close ahead in the same lane.", set(), {"car"}),
    # explicit "none"
    ("Action: none. Reason: none.", set(), set()),
    # unparseable
    ("", None, None),
    ("a blue sky with some clouds", None, None),
    ("123 abc", None, None),
    ("Describe the driving scene.", None, None),
]


def _vecs(actions, reasons):
    a = [0] * N_ACTIONS
    for x in actions:
        a[ACTIONS.index(x)] = 1
    r = [0] * N_REASONS
    for x in reasons:
        r[RN[x]] = 1
    return a, r


def test_table_is_large_enough():
    assert len(CASES) >= 50


@pytest.mark.parametrize("text,actions,reasons", CASES, ids=[c[0][:40] or "<empty>" for c in CASES])
def test_phrasing(text, actions, reasons):
    p = parse_answer(text)
    if actions is None:
        assert p.unparseable
        assert p.actions == [0] * N_ACTIONS and p.reasons == [0] * N_REASONS
        return
    a, r = _vecs(actions, reasons)
    got_a = {ACTIONS[i] for i, v in enumerate(p.actions) if v}
    got_r = {REASONS[i] for i, v in enumerate(p.reasons) if v}
    assert p.actions == a, f"actions {got_a} for {text!r}"
    assert p.reasons == r, f"reasons {got_r} for {text!r}"
    assert not p.unparseable


def test_round_trip_every_single_label():
    """Every label's own text, through kit.labels.format_answer, parses back to itself."""
    for i in range(N_ACTIONS):
        a = [0] * N_ACTIONS
        a[i] = 1
        for j in range(N_REASONS):
            r = [0] * N_REASONS
            r[j] = 1
            p = parse_answer(format_answer(a, r))
            assert (p.actions, p.reasons) == (a, r), format_answer(a, r)


def test_round_trip_random_combinations():
    import random

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.random() < 0.3 for _ in range(N_ACTIONS)]
        r = [rng.random() < 0.15 for _ in range(N_REASONS)]
        a, r = [int(x) for x in a], [int(x) for x in r]
        p = parse_answer(format_answer(a, r))
        assert (p.actions, p.reasons) == (a, r), format_answer(a, r)
        assert not p.unparseable
