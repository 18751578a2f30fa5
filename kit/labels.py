"""BDD-OIA's label space and the text formats paper B uses for it.

One place for the 4 actions, the 21 reasons (in the official index order), their short names,
the sentences the paper's SFT target uses, and the prompts of each stage. Everything that turns
labels into text or back (toy world, SFT targets, CLIP pairs, the answer parser) starts here.
"""
from __future__ import annotations

from typing import Sequence

# Official action order: 0 move forward, 1 stop/slow down, 2 turn left, 3 turn right.
ACTIONS = ["forward", "stop", "left", "right"]
ACTION_TEXTS = ["move forward", "stop", "turn left", "turn right"]

# Official reason order (index = position in the 21-vector); texts follow paper B's tables.
REASONS = [
    "Traffic light is green",                # 0  -> forward
    "Follow traffic",                        # 1
    "Road is clear",                         # 2
    "Traffic light is not green",            # 3  -> stop
    "Traffic sign",                          # 4
    "Obstacle: car",                         # 5
    "Obstacle: person",                      # 6
    "Obstacle: rider",                       # 7
    "Obstacle: others",                      # 8
    "No lane on the left",                   # 9  -> not left
    "Obstacles on the left lane",            # 10
    "Solid line on the left",                # 11
    "On the left-turn lane",                 # 12 -> left
    "Traffic light allows to turn left",     # 13
    "Front car turning left",                # 14
    "No lane on the right",                  # 15 -> not right
    "Obstacles on the right lane",           # 16
    "Solid line on the right",               # 17
    "On the right-turn lane",                # 18 -> right
    "Traffic light allows to turn right",    # 19
    "Front car turning right",               # 20
]
N_ACTIONS = len(ACTIONS)
N_REASONS = len(REASONS)

# Which action each reason explains (the "why" / "why not" grouping of BDD-OIA).
REASON_GROUPS = {
    "forward": [0, 1, 2],
    "stop": [3, 4, 5, 6, 7, 8],
    "not_left": [9, 10, 11],
    "left": [12, 13, 14],
    "not_right": [15, 16, 17],
    "right": [18, 19, 20],
}

# Prompts. The SFT baseline asks for the paper's `Action: ... Reason: ...` answer; stage 1 (RLOO)
# asks for a free description; stage 2 uses the paper's own action question verbatim.
ANSWER_PROMPT = "What should the car do next, and why? Answer as: Action: <action>. Reason: <reason>."
DESCRIBE_PROMPT = "Describe the driving scene."
ACTION_PROMPT = "Based on the caption and image, what is the next action: <forward, stop, turn left, turn right>?"


def _ints(vec: Sequence[int], n: int, what: str) -> list[int]:
    vec = [int(v) for v in vec]
    if len(vec) != n:
        raise ValueError(f"{what}: expected {n} labels, got {len(vec)}")
    return vec


def action_text(actions: Sequence[int]) -> str:
    """'stop' or 'move forward, turn left' for a 4-vector; 'none' if empty."""
    a = _ints(actions, N_ACTIONS, "actions")
    names = [ACTION_TEXTS[i] for i, v in enumerate(a) if v]
    return ", ".join(names) if names else "none"


def reason_text(reasons: Sequence[int]) -> str:
    r = _ints(reasons, N_REASONS, "reasons")
    names = [REASONS[i] for i, v in enumerate(r) if v]
    return "; ".join(names) if names else "none"


def format_answer(actions: Sequence[int], reasons: Sequence[int]) -> str:
    """Paper B's target text from BDD-OIA's label vectors (4 actions, 21 reasons).

    >>> format_answer([0, 1, 0, 0], [0, 0, 0, 1] + [0] * 17)
    'Action: stop. Reason: Traffic light is not green.'
    """
    return f"Action: {action_text(actions)}. Reason: {reason_text(reasons)}."


def format_action_answer(actions: Sequence[int]) -> str:
    """Stage-2 target: the action only, e.g. `Action: stop.`"""
    return f"Action: {action_text(actions)}."


def stage2_prompt(description: str) -> str:
    """The stage-2 question: the stage-1 description, then paper B's action question verbatim."""
    if not isinstance(description, str):
        raise TypeError(f"stage2_prompt: description must be a string, got {type(description).__name__}")
    return f"Caption: {description.strip()}\n{ACTION_PROMPT}"
