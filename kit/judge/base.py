"""One interface for every judge backend: ask for ratings (1-10) or pairwise verdicts, never lose an item.

A backend answers one chat request at a time (`_ask(messages, request) -> (text, usage)`); this
class does what every backend needs around that:

- the kit's prompts turned into chat messages (kit.judge.prompts), the same for every backend;
- a disk cache keyed by backend, model and the request (kit.judge.cache), so a rerun sends no
  request twice; only answers that parsed are cached;
- bounded concurrency (a thread pool of `concurrency` workers) with a progress bar;
- re-asking when an answer holds no parsable `[[N]]` / `[[A]]`, up to `reask` more times;
- counts of everything: requests sent, cache hits, transport failures, unparsable answers,
  items that still failed, and tokens (`stats`);
- limits, so a judge that cannot answer stops instead of sending for hours: a `deadline_s` for the
  judge's whole life (from its first `judge` call; a request near it gets only the time left), and a
  breaker that stops after `max_consecutive_failures` failed requests in a row (transport failures and
  answers holding no verdict alike; one that parses resets it). Ctrl-C stops at once: the requests in
  flight end (within their timeout), nothing new is sent, and what was judged stays in the cache.

An item that still fails, or that a stop left unasked, comes back with `verdict=None` and its `error`
(`stats["stopped"]` says why the judge stopped); callers count it in `coverage` and list it
(kit.judge.score), they never drop it silently.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Sequence

from tqdm.auto import tqdm

from kit import dist
from kit.judge.prompts import load_prompts, messages_for
from kit.judge.request import JudgeRequest, JudgeResult, TransientJudgeError, parse


class Judge:
    """Base class of the backends. Subclasses set `backend`, `model` and implement `_ask`."""

    backend = "base"
    model = ""
    cacheable = True  # a backend that costs nothing (rubric) sets False

    def __init__(self, *, prompts=None, cache=None, concurrency: int = 1, reask: int = 2,
                 deadline_s: float | None = None, max_consecutive_failures: int | None = None):
        for name, v in (("deadline_s", deadline_s), ("max_consecutive_failures", max_consecutive_failures)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"params judge.{name}: expected a number > 0 or null (no limit), got {v!r}")
        self.prompts = prompts if prompts is not None else load_prompts(None)
        self.cache = cache if self.cacheable else None
        self.concurrency = max(1, int(concurrency))
        self.reask = max(0, int(reask))
        self.deadline_s = None if deadline_s is None else float(deadline_s)
        self.max_consecutive_failures = None if max_consecutive_failures is None else int(max_consecutive_failures)
        self._lock = threading.Lock()
        self._started: float | None = None       # time.monotonic() of the first judge() call
        self._in_a_row = 0                       # failed requests since the last one that parsed
        self.stats: dict[str, Any] = {"requests_sent": 0, "cache_hits": 0, "transport_failures": 0,
                                      "unparsable_answers": 0, "failed_items": 0, "items": 0,
                                      "prompt_tokens": 0, "completion_tokens": 0, "stopped": None}

    # -- what a backend implements -----------------------------------------------------------
    def _ask(self, messages: list[dict], request: JudgeRequest) -> tuple[str, dict]:
        """One answer (text, usage) to `messages`; raise TransientJudgeError when it could not be had."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What identifies this judge in files (never a secret)."""
        return {"backend": self.backend, "model": self.model}

    # -- the shared machinery -----------------------------------------------------------------
    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self.stats[k] = self.stats.get(k, 0) + v

    def stop(self, why: str) -> None:
        """Send nothing more: every item not yet asked fails with `why` (the first reason is kept)."""
        with self._lock:
            if self.stats["stopped"] is None:
                self.stats["stopped"] = why

    def time_left(self) -> float | None:
        """Seconds until the deadline (None: no deadline); stops the judge when none are left."""
        if self.deadline_s is None or self._started is None:
            return None
        left = self._started + self.deadline_s - time.monotonic()
        if left <= 0:
            self.stop(f"the deadline of {self.deadline_s:g} s (params judge.deadline_s) was reached")
        return max(left, 0.0)

    def _failed_request(self, error: str) -> None:
        with self._lock:
            self._in_a_row += 1
            n = self._in_a_row
        if self.max_consecutive_failures is not None and n >= self.max_consecutive_failures:
            self.stop(f"{n} requests in a row failed (params judge.max_consecutive_failures); the last: {error}")

    def cache_key(self, messages: list[dict]) -> dict:
        return {"backend": self.backend, "model": self.model, "messages": messages}

    def judge_one(self, request: JudgeRequest) -> JudgeResult:
        messages = messages_for(request, self.prompts)
        key = self.cache_key(messages) if self.cache is not None else None
        if key is not None:
            hit = self.cache.get(key)
            if hit is not None and parse(request, hit.get("text")) is not None:
                self._count(cache_hits=1, items=1)
                return JudgeResult(parse(request, hit["text"]), hit["text"], 0, True, None, hit.get("usage") or {})
        attempts, text, error, usage = 0, None, None, {}
        for _ in range(1 + self.reask):
            self.time_left()
            if self.stats["stopped"] is not None:
                error = f"stopped: {self.stats['stopped']}"
                break
            attempts += 1
            self._count(requests_sent=1)
            try:
                text, usage = self._ask(messages, request)
            except TransientJudgeError as e:
                self._count(transport_failures=1)
                error = f"transport: {e}"
                self._failed_request(error)
                continue
            self._count(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0))
            verdict = parse(request, text)
            if verdict is not None:
                with self._lock:
                    self._in_a_row = 0
                if key is not None:
                    self.cache.put(key, {"text": text, "usage": usage})
                self._count(items=1)
                return JudgeResult(verdict, text, attempts, False, None, usage)
            self._count(unparsable_answers=1)
            error = "unparsable: no " + ("[[1-10]] rating" if request.kind == "rate" else "[[A]]/[[B]]/[[C]] verdict")
            self._failed_request(error)
        self._count(failed_items=1, items=1)
        return JudgeResult(None, text, attempts, False, error, usage)

    def judge(self, requests: Sequence[JudgeRequest], desc: str = "judge", progress: bool = True) -> list[JudgeResult]:
        """Results for `requests`, in order (concurrently, `concurrency` at a time). Under several
        processes each judges its block (kit.dist) and every process gets every result, and the
        counts of all processes in `stats`."""
        everything = list(requests)
        if self._started is None:
            self._started = time.monotonic()
        if dist.num_processes() == 1:
            return self._judge(everything, desc, progress)
        before = dict(self.stats)
        mine = self._judge([everything[i] for i in dist.my_share(len(everything))], desc, progress and dist.is_main())
        dist.sum_counts_since(self.stats, before)
        return dist.gather_in_order(mine)

    def _judge(self, requests: list[JudgeRequest], desc: str, progress: bool) -> list[JudgeResult]:
        out: list[JudgeResult | None] = [None] * len(requests)
        with tqdm(total=len(requests), desc=desc, disable=not progress, leave=False) as bar:
            if self.concurrency == 1:
                for i, r in enumerate(requests):
                    out[i] = self.judge_one(r)
                    bar.update(1)
            else:
                pool = ThreadPoolExecutor(max_workers=self.concurrency)
                try:
                    futures = {pool.submit(self.judge_one, r): i for i, r in enumerate(requests)}
                    for f in as_completed(futures):
                        out[futures[f]] = f.result()
                        bar.update(1)
                except BaseException as e:  # an error that stops the run, or Ctrl-C: nothing new is sent
                    self.stop("interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}")
                    # the requests in flight end within their timeout; Ctrl-C does not wait for them
                    pool.shutdown(wait=not isinstance(e, KeyboardInterrupt), cancel_futures=True)
                    raise
                pool.shutdown()
        return out  # type: ignore[return-value]
