"""Reading a judge's answer: the rating of `Rating: [[N]]` and the verdict of `[[A]]`/`[[B]]`/`[[C]]`.

The rating is read the way CODA-LM's official evaluators read it (first `Rating: [[`, then
`rating is: [[`, then any `[[`, each up to the next `]]`, as an integer), so the same judge answers
give the same scores here and there. Unlike them, a rating outside 1-10 counts as unparsable
(the caller re-asks and counts it) instead of entering the mean.

The verdict is read as FastChat's pairwise judge reads it: `[[A]]` first, then `[[B]]`, then `[[C]]`
(a tie); anything else is unparsable.
"""
from __future__ import annotations

RATING_MARKERS = ("Rating: [[", "rating is: [[", "[[")
VERDICTS = ("A", "B", "C")


def parse_rating(text: str | None) -> int | None:
    """1-10 from a judge's answer, or None when it holds no readable rating."""
    if not text:
        return None
    for marker in RATING_MARKERS:
        if marker not in text:
            continue
        inner = text.split(marker, 1)[1].split("]]", 1)[0]
        try:
            value = int(inner)
        except ValueError:
            continue
        return value if 1 <= value <= 10 else None
    return None


def parse_verdict(text: str | None) -> str | None:
    """'A', 'B' or 'C' (tie) from a pairwise judge's answer, or None."""
    if not text:
        return None
    for v in VERDICTS:
        if f"[[{v}]]" in text:
            return v
    return None
