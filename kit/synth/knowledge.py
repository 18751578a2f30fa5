"""Knowledge retrieval (paper A, step 3): each object name searches a knowledge base of textual
descriptions. Paper A searched the web for wiki pages; the kit searches a local JSONL (its own small
one for CODA-LM's categories, written in its own words, or the user's, e.g. an encyclopedia extract)
with a real retrieval library: scikit-learn's TF-IDF (cosine) or rank_bm25's BM25Okapi.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from kit.data import DataError
from kit.runs import read_jsonl

DEFAULT_PATH = Path(__file__).resolve().parent / "knowledge" / "coda_categories.jsonl"
BACKENDS = ("tfidf", "bm25")
_WORD = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("_", " "))


def load_documents(path) -> list[dict]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"params synth.knowledge.path: {path} does not exist; expected a JSONL of "
                                '{"id", "title", "text"} rows')
    docs = []
    for i, r in enumerate(read_jsonl(path), 1):
        for f in ("id", "title", "text"):
            if not isinstance(r.get(f), str) or not r[f].strip():
                raise DataError(f"{path}:{i}: field '{f}': expected a non-empty string")
        docs.append({"id": r["id"], "title": r["title"], "text": r["text"]})
    if not docs:
        raise DataError(f"{path}: no documents; expected one JSON object per line")
    return docs


class KnowledgeBase:
    def __init__(self, docs: list[dict], backend: str = "tfidf"):
        if backend not in BACKENDS:
            raise ValueError(f"params synth.knowledge.backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
        self.docs, self.backend = docs, backend
        corpus = [f"{d['title']} {d['title']} {d['text']}" for d in docs]  # the title counts twice: it names the object
        if backend == "tfidf":
            from sklearn.feature_extraction.text import TfidfVectorizer

            self._vec = TfidfVectorizer(tokenizer=_tokens, lowercase=False, token_pattern=None, sublinear_tf=True)
            self._mat = self._vec.fit_transform(corpus)
        else:
            from rank_bm25 import BM25Okapi

            self._bm25 = BM25Okapi([_tokens(c) for c in corpus])

    @classmethod
    def from_params(cls, cfg: Mapping) -> "KnowledgeBase":
        return cls(load_documents(cfg.get("path") or DEFAULT_PATH), str(cfg.get("backend") or "tfidf"))

    def scores(self, query: str):
        import numpy as np

        if self.backend == "tfidf":
            return (self._mat @ self._vec.transform([query]).T).toarray().ravel()
        return np.asarray(self._bm25.get_scores(_tokens(query)), dtype=float)

    def search(self, query: str, k: int = 1) -> list[tuple[dict, float]]:
        """The k best documents for `query` with their scores, best first."""
        s = self.scores(query.replace("_", " "))
        order = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        return [(self.docs[i], round(float(s[i]), 4)) for i in order]
