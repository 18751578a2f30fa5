"""What a judge is asked and what it answers: the request, the result, and the error of a request that
failed after its retries. Shared by the prompts, every backend and the scorers."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from kit.judge.parse import parse_rating, parse_verdict

TASKS = ("general_perception", "region_perception", "driving_suggestion")


@dataclass(frozen=True)
class JudgeRequest:
    """What is judged. `kind` "rate": `prediction` against `reference`; "pair": `answer_a` against
    `answer_b`, with `reference` as the reference answer."""
    kind: str
    task: str
    reference: str
    prediction: str | None = None
    answer_a: str | None = None
    answer_b: str | None = None
    question: str = ""

    def __post_init__(self):
        if self.kind not in ("rate", "pair"):
            raise ValueError(f"JudgeRequest.kind: expected 'rate' or 'pair', got {self.kind!r}")
        if self.task not in TASKS:
            raise ValueError(f"JudgeRequest.task: expected one of {', '.join(TASKS)}, got {self.task!r}")
        if self.kind == "rate" and self.prediction is None:
            raise ValueError("JudgeRequest: kind 'rate' needs a prediction")
        if self.kind == "pair" and (self.answer_a is None or self.answer_b is None):
            raise ValueError("JudgeRequest: kind 'pair' needs answer_a and answer_b")


@dataclass
class JudgeResult:
    verdict: int | str | None      # rating 1-10 ("rate"), "A" | "B" | "C" ("pair"); None: failed
    text: str | None               # the judge's last answer
    attempts: int = 0              # requests sent for this item (0: answered from the cache)
    cached: bool = False
    error: str | None = None       # why it failed, when verdict is None
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens of the answer kept

    def to_json(self) -> dict:
        return asdict(self)


class TransientJudgeError(RuntimeError):
    """A request that failed after the backend's own retries (timeout, 429, 5xx, connection)."""


def parse(request: JudgeRequest, text: str | None):
    return parse_rating(text) if request.kind == "rate" else parse_verdict(text)
