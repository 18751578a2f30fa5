"""Paper B's image-text pairs for the CLIP reward fine-tune (its Appendix B.2-B.3).

Positive (label 1): an image and one of its true reason (or action) texts. Negative (label 0): the
same image and a text drawn at random from the pool of all distinct texts in the data that is none
of the image's true texts (a BDD-OIA image often has several true reasons; any of them would be a
false negative). Every true text of an image gives one positive and one negative, so the classes
are balanced. The pairs are then split with scikit-learn's `train_test_split(stratify=...,
random_state=42)` into the profile's train / val / test sizes, stratified on (label, text).
As in the paper, the split is over pairs: one image can occur in train and test with different texts.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from kit.labels import ACTION_TEXTS, REASONS

TARGETS = ("reason", "action")
SPLIT_SEED = 42


@dataclass(frozen=True)
class Pair:
    id: str                   # sample id (file_name stem)
    image_path: str           # the annotated (last) frame
    text: str
    label: int                # 1 positive, 0 negative
    anchor: str               # the true text this pair was made from (== text for a positive)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PairSplits:
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    stats: dict = field(default_factory=dict)

    def __getitem__(self, split: str) -> list[Pair]:
        if split not in ("train", "val", "test"):
            raise KeyError(f"pair split {split!r}: expected train, val or test")
        return getattr(self, split)

    def items(self):
        return (("train", self.train), ("val", self.val), ("test", self.test))


def _check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"params clip_finetune.target: expected one of {TARGETS}, got {target!r}")
    return target


def label_texts(target: str) -> list[str]:
    """The text of every label of the target family, in index order."""
    return list(REASONS) if _check_target(target) == "reason" else list(ACTION_TEXTS)


def true_texts(sample: Any, target: str) -> list[str]:
    """The image's true single-label texts (`sample.reasons` / `sample.actions` are 0/1 vectors)."""
    vec = sample.reasons if _check_target(target) == "reason" else sample.actions
    names = label_texts(target)
    if len(vec) != len(names):
        raise ValueError(f"sample {getattr(sample, 'id', '?')}: field {target}s has {len(vec)} entries, expected {len(names)}")
    return [names[i] for i, v in enumerate(vec) if int(v)]


_LR = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(text: str) -> str:
    """'Solid line on the left' -> 'Solid line on the right' (and back), keeping the case: the text
    that goes with a horizontally flipped image."""
    def sub(m: re.Match) -> str:
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        if w.isupper():
            return new.upper()
        return new.capitalize() if w[0].isupper() else new
    return _LR.sub(sub, text)


def _scaled_sizes(sizes: Mapping[str, int], available: int) -> dict[str, int]:
    want = {k: int(sizes.get(k, 0) or 0) for k in ("train", "val", "test")}
    total = sum(want.values())
    if total <= 0:
        raise ValueError(f"params clip_finetune.splits: expected positive train/val/test sizes, got {dict(sizes)}")
    if total <= available:
        return want
    f = available / total  # not enough pairs: keep the proportions
    out = {k: int(v * f) for k, v in want.items()}
    out["train"] = available - out["val"] - out["test"]
    return out


def _split(items: list, labels: list[str], coarse: list[int], size: int, seed: int) -> tuple[list, list, str]:
    """(rest, taken) with `taken` of `size` items, stratified on `labels`, else on `coarse`."""
    from sklearn.model_selection import train_test_split

    if size <= 0:
        return items, [], "none"
    if size >= len(items):
        return [], items, "none"
    for strat, name in ((labels, "label+text"), (coarse, "label")):
        try:
            rest, taken = train_test_split(items, test_size=size, stratify=strat, random_state=seed)
            return rest, taken, name
        except ValueError:  # a stratum with fewer than 2 members, or fewer items than strata
            continue
    rest, taken = train_test_split(items, test_size=size, random_state=seed)
    return rest, taken, "none"


def make_pairs(samples: Iterable[Any], target: str = "reason", sizes: Mapping[str, int] | None = None,
               seed: int = SPLIT_SEED) -> PairSplits:
    """Positive and negative pairs for `target` (reason | action), split train / val / test.

    `samples` need `.id`, `.image_path`, `.actions`, `.reasons` (kit.data.bdd_oia.BddSample).
    The same samples, target, sizes and seed always give the same pairs and splits.
    """
    _check_target(target)
    samples = sorted(samples, key=lambda s: str(s.id))
    truths = [true_texts(s, target) for s in samples]
    pool = sorted({t for ts in truths for t in ts}, key=label_texts(target).index)
    rng = random.Random(f"pairs:{target}:{seed}")
    pairs: list[Pair] = []
    no_text = no_negative = 0
    for s, ts in zip(samples, truths):
        if not ts:
            no_text += 1
            continue
        negatives = [t for t in pool if t not in ts]
        if not negatives:
            no_negative += 1
            continue
        for t in ts:
            pairs.append(Pair(str(s.id), str(s.image_path), t, 1, t))
            pairs.append(Pair(str(s.id), str(s.image_path), rng.choice(negatives), 0, t))
    if not pairs:
        raise ValueError(f"make_pairs: no {target} pairs could be made from {len(samples)} samples "
                         f"({no_text} had no true {target}, {no_negative} had every {target} true)")
    n = _scaled_sizes(sizes or {"train": 1400, "val": 200, "test": 400}, len(pairs))
    strat = lambda ps: [f"{p.label}|{p.text}" for p in ps]  # noqa: E731
    coarse = lambda ps: [p.label for p in ps]  # noqa: E731
    total = sum(n.values())
    _, pool_pairs, how0 = _split(pairs, strat(pairs), coarse(pairs), total, seed)
    rest, test, how1 = _split(pool_pairs, strat(pool_pairs), coarse(pool_pairs), n["test"], seed)
    train, val, how2 = _split(rest, strat(rest), coarse(rest), n["val"], seed)
    stats = {
        "target": target, "seed": seed, "samples": len(samples), "pool": pool, "available_pairs": len(pairs),
        "skipped_no_true_text": no_text, "skipped_no_negative": no_negative,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "requested_sizes": {k: int((sizes or {}).get(k, 0) or 0) for k in ("train", "val", "test")} if sizes else None,
        "stratified_on": sorted({how0, how1, how2} - {"none"}) or ["none"],
        "positive_share": {k: (sum(p.label for p in v) / len(v) if v else None)
                           for k, v in (("train", train), ("val", val), ("test", test))},
    }
    return PairSplits(list(train), list(val), list(test), stats)


def text_counts(pairs: Sequence[Pair]) -> dict[str, dict[str, int]]:
    """text -> {"pos": n, "neg": n}: how often each text occurs as a positive and as a negative."""
    c: Counter = Counter((p.text, p.label) for p in pairs)
    texts = sorted({p.text for p in pairs})
    return {t: {"pos": c[(t, 1)], "neg": c[(t, 0)]} for t in texts}
