"""The openai judge backend against a real HTTP server on 127.0.0.1 (pytest-httpserver) that speaks
the chat-completions format: faults (429, 500, timeouts, unparsable answers) absorbed by the
client's retries and the judge's re-asks, the cache, the key's whereabouts, failures that stay
visible, pairwise verdicts, concurrency, refused requests (4xx) and configuration errors."""
from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import defaultdict

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from kit.judge.factory import make_judge
from kit.judge.request import JudgeRequest, TransientJudgeError
from kit.judge.cache import DiskCache
from kit.judge.openai_judge import JudgeRequestError, OpenAIJudge

TASKS = ("general_perception", "region_perception", "driving_suggestion")
TIMEOUT = 0.5      # the client's timeout in these tests (s)
SLOW = 1.5         # how long a "slow" answer takes (well past TIMEOUT; released at teardown)
FAULTS = ["429", "500", "slow", "junk", "ok"]  # what the faulty server answers an item, request by request


def rating(i: int) -> int:
    return i * 3 % 10 + 1


def verdict(i: int) -> str:
    return "ABC"[i % 3]


def rate_request(i: int) -> JudgeRequest:
    return JudgeRequest("rate", TASKS[i % 3], reference=f"reference of item-{i}: a car ahead, stop.",
                        prediction=f"prediction of item-{i}: a car ahead.")


def pair_request(i: int) -> JudgeRequest:
    return JudgeRequest("pair", TASKS[i % 3], reference=f"reference of item-{i}", question="What is ahead?",
                        answer_a=f"answer A of item-{i}", answer_b=f"answer B of item-{i}")


class FakeOpenAI:
    """A chat-completions endpoint. The item is read from the last user message (`item-<n>`);
    `plan(n)` lists what to answer its 1st, 2nd, ... request (the last entry repeats)."""

    def __init__(self):
        self.plan = lambda n: ["ok"]
        self.delay = lambda n: 0.0
        self.echo_key_in_401 = False
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.log: list[dict] = []            # one entry per request received
        self.per_item: dict[int, int] = defaultdict(int)
        self.inflight = self.max_inflight = 0
        self.done: list[int] = []            # items in the order their answers were sent
        self.url = ""

    def count(self, item=None) -> int:
        return sum(1 for r in self.log if item is None or r["item"] == item)

    def handler(self, request):
        body = json.loads(request.get_data())
        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        item = int(re.search(r"item-(\d+)", last).group(1))
        with self.lock:
            k = self.per_item[item]
            self.per_item[item] += 1
            self.log.append({"item": item, "auth": request.headers.get("Authorization"), "body": body,
                             "retry_count": request.headers.get("x-stainless-retry-count")})
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            plan = self.plan(item)
            action = plan[min(k, len(plan) - 1)]
            if self.delay(item):
                time.sleep(self.delay(item))
            return self.respond(action, item, body, request.headers.get("Authorization") or "")
        finally:
            with self.lock:
                self.inflight -= 1
                self.done.append(item)

    def respond(self, action, item, body, auth):
        if action == "429":
            return Response(json.dumps({"error": {"message": "rate limited", "type": "requests"}}), status=429,
                            headers={"Retry-After": "0"}, content_type="application/json")
        if action in ("500", "404"):
            return Response(json.dumps({"error": {"message": f"error {action}", "type": "server"}}),
                            status=int(action), content_type="application/json")
        if action == "401":
            msg = f"Incorrect API key provided: {auth.split()[-1]}" if self.echo_key_in_401 else "Incorrect API key provided"
            return Response(json.dumps({"error": {"message": msg, "type": "invalid_request_error"}}), status=401,
                            content_type="application/json")
        if action == "html":
            return Response("<html><body>not an API</body></html>", content_type="text/html")
        if action == "slow":
            self.release.wait(SLOW)
            text = "sorry, too slow"
        elif action == "junk":
            text = "The prediction is fine, I would say around seven."
        else:
            pair = "[Answer of assistant A]" in body["messages"][-1]["content"]
            text = (f"Assistant {verdict(item)} is better. [[{verdict(item)}]]" if pair
                    else f"The prediction finds the car. Rating: [[{rating(item)}]]")
        return Response(json.dumps({
            "id": f"chatcmpl-{item}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}}),
            content_type="application/json")


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-" + secrets.token_hex(16))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture(scope="module")
def server():
    srv = HTTPServer(host="127.0.0.1", port=0, threaded=True)  # threaded: slow answers block no other
    srv.start()
    yield srv
    srv.clear()
    srv.stop()


@pytest.fixture
def fake(server):
    f = FakeOpenAI()
    server.clear()
    server.expect_request("/v1/chat/completions", method="POST").respond_with_handler(f.handler)
    f.url = server.url_for("/v1")
    try:
        yield f
    finally:
        f.release.set()          # let slow answers end now
        server.check_handler_errors()


def judge_for(fake, cache_dir, **kw) -> OpenAIJudge:
    kw = {"concurrency": 6, "reask": 2, "timeout": TIMEOUT, "max_retries": 1, **kw}
    return OpenAIJudge(base_url=fake.url, model="judge-model", cache=DiskCache(cache_dir), **kw)


def test_faults_are_absorbed_and_a_rerun_sends_nothing(fake, tmp_path):
    reqs = [rate_request(i) for i in range(6)]
    # the baseline without faults: a client timeout no busy machine reaches (the first requests of the
    # module also start the client and the server's threads), so every item is asked once
    clean = judge_for(fake, tmp_path / "clean", timeout=30).judge(reqs, progress=False)
    assert [r.verdict for r in clean] == [rating(i) for i in range(6)]
    assert fake.count() == 6

    fake.log.clear()
    fake.per_item.clear()
    fake.plan = lambda n: FAULTS
    judge = judge_for(fake, tmp_path / "cache")
    t0 = time.perf_counter()
    res = judge.judge(reqs, progress=False)
    assert time.perf_counter() - t0 < 6
    assert [r.verdict for r in res] == [r.verdict for r in clean]      # as if the server had no faults
    assert all(r.error is None and not r.cached and r.attempts == 3 for r in res)
    # every item: 429 -> the client retries -> 500 (retries spent: transport failure, the judge asks again)
    # -> timeout -> the client retries -> unparsable (the judge asks again) -> the rating
    for i in range(6):
        seen = [r["retry_count"] for r in fake.log if r["item"] == i]
        assert seen == ["0", "1", "0", "1", "0"], (i, seen)
    assert fake.count() == 6 * len(FAULTS)
    s = judge.stats
    assert (s["requests_sent"], s["transport_failures"], s["unparsable_answers"], s["failed_items"], s["items"]) \
        == (18, 6, 6, 0, 6)
    assert (s["prompt_tokens"], s["completion_tokens"]) == (12 * 11, 12 * 5)  # the junk answers and the ratings
    assert res[0].usage == {"prompt_tokens": 11, "completion_tokens": 5}
    assert len(DiskCache(tmp_path / "cache")) == 6

    # a rerun on the same cache folder sends nothing and gives the same ratings
    fake.log.clear()
    again = judge_for(fake, tmp_path / "cache")
    res2 = again.judge(reqs, progress=False)
    assert fake.count() == 0
    assert [r.verdict for r in res2] == [r.verdict for r in res]
    assert all(r.cached and r.attempts == 0 for r in res2)
    assert (again.stats["cache_hits"], again.stats["requests_sent"]) == (6, 0)


def test_the_key_is_used_and_written_nowhere(fake, tmp_path, monkeypatch):
    import os

    key = os.environ["OPENAI_API_KEY"]
    fake.plan = lambda n: ["junk"] if n == 3 else ["500"] if n == 4 else ["ok"]
    judge = judge_for(fake, tmp_path / "cache", max_retries=0)
    res = judge.judge([rate_request(i) for i in range(6)] + [pair_request(6)], progress=False)
    assert fake.count() > 0 and all(r["auth"] == f"Bearer {key}" for r in fake.log)
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(files) == 5
    for p in files:
        assert key not in p.read_text()
    for text in (json.dumps(judge.describe()), repr(judge), json.dumps([r.to_json() for r in res]),
                 json.dumps(judge.stats)):
        assert key not in text
    assert judge.describe() == {"backend": "openai", "model": "judge-model", "base_url": fake.url}
    assert key not in json.dumps({k: v for k, v in vars(judge).items() if isinstance(v, (str, int, float))})

    # a server that echoes the key it refuses: the error names the variable, not the key
    fake.plan = lambda n: ["401"]
    fake.echo_key_in_401 = True
    with pytest.raises(JudgeRequestError) as e:
        judge_for(fake, tmp_path / "other").judge([rate_request(9)], progress=False)
    assert key not in str(e.value) and "<$OPENAI_API_KEY>" in str(e.value)


def test_an_item_that_always_fails_is_kept_counted_and_not_cached(fake, tmp_path):
    fake.plan = lambda n: ["junk"] if n == 1 else ["500"] if n == 2 else ["ok"]
    reqs = [rate_request(i) for i in range(4)]
    judge = judge_for(fake, tmp_path / "cache", max_retries=0)
    res = judge.judge(reqs, progress=False)
    assert [r.verdict for r in res] == [rating(0), None, None, rating(3)]
    assert res[1].error.startswith("unparsable") and res[1].attempts == 3 and "seven" in res[1].text
    assert res[2].error.startswith("transport") and "HTTP 500" in res[2].error and res[2].attempts == 3
    s = judge.stats
    assert (s["failed_items"], s["items"], s["unparsable_answers"], s["transport_failures"]) == (2, 4, 3, 3)
    assert fake.count(1) == 3 and fake.count(2) == 3
    assert len(DiskCache(tmp_path / "cache")) == 2

    # not cached: a rerun asks the failed items again, and only them
    fake.log.clear()
    fake.plan = lambda n: ["ok"]
    res2 = judge_for(fake, tmp_path / "cache").judge(reqs, progress=False)
    assert sorted(r["item"] for r in fake.log) == [1, 2]
    assert [r.verdict for r in res2] == [rating(i) for i in range(4)]
    assert [r.cached for r in res2] == [True, False, False, True]


def test_pairwise_verdicts(fake, tmp_path):
    from kit.judge.prompts import load_prompts

    reqs = [pair_request(i) for i in range(6)] + [rate_request(6)]
    judge = judge_for(fake, tmp_path / "cache")
    res = judge.judge(reqs, progress=False)
    assert [r.verdict for r in res] == [verdict(i) for i in range(6)] + [rating(6)]
    assert sorted({r.verdict for r in res[:6]}) == ["A", "B", "C"]
    system = {r["item"]: r["body"]["messages"][0]["content"] for r in fake.log}
    assert system[0] == load_prompts(None)["system"]["pairwise"]
    assert system[6] == load_prompts(None)["system"][rate_request(6).task]
    body = fake.log[0]["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0 and "max_tokens" not in body

    fake.log.clear()
    judge_for(fake, tmp_path / "capped", max_tokens=64).judge([pair_request(0)], progress=False)
    assert fake.log[0]["body"]["max_tokens"] == 64


def test_concurrency_keeps_request_order(fake, tmp_path):
    n = 12
    fake.delay = lambda i: (n - i) * 0.015       # later items answer first
    judge = judge_for(fake, tmp_path / "cache", concurrency=4)
    res = judge.judge([rate_request(i) for i in range(n)], progress=False)
    assert [r.verdict for r in res] == [rating(i) for i in range(n)]
    assert 2 <= fake.max_inflight <= 4
    assert fake.done != sorted(fake.done)        # the answers came back out of order


def test_refused_requests_stop_at_once(fake, tmp_path):
    fake.plan = lambda n: ["401"]
    judge = judge_for(fake, tmp_path / "cache", concurrency=4)
    with pytest.raises(JudgeRequestError, match=r"HTTP 401.*OPENAI_API_KEY"):
        judge.judge([rate_request(i) for i in range(20)], progress=False)
    # no retries, no re-asks, and the 20 requests stop soon after the first refusal: up to 4 in flight, and
    # under load a worker can start one more request in the moment before a refusal is recorded
    assert 1 <= fake.count() <= 2 * 4
    assert judge.stats["requests_sent"] == fake.count()
    assert judge.stats["transport_failures"] == 0

    fake.log.clear()
    fake.plan = lambda n: ["404"]
    with pytest.raises(JudgeRequestError, match=r"HTTP 404.*params judge.model"):
        judge_for(fake, tmp_path / "cache").judge([rate_request(0)], progress=False)
    assert fake.count() == 1

    fake.plan = lambda n: ["html"]
    with pytest.raises(JudgeRequestError, match=r"params judge.base_url"):
        judge_for(fake, tmp_path / "cache").judge([rate_request(0)], progress=False)
    assert len(DiskCache(tmp_path / "cache")) == 0


def test_unreachable_server_is_transient(tmp_path):
    import socket

    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = OpenAIJudge(base_url=f"http://127.0.0.1:{port}/v1", model="m", cache=DiskCache(tmp_path),
                        reask=1, timeout=TIMEOUT, max_retries=0)
    with pytest.raises(TransientJudgeError, match="cannot reach"):
        judge._ask([{"role": "user", "content": "x"}], rate_request(0))
    res = judge.judge([rate_request(0)], progress=False)
    assert res[0].verdict is None and res[0].error.startswith("transport") and judge.stats["failed_items"] == 1


def test_configuration_errors(monkeypatch, tmp_path):
    ok = {"base_url": "http://127.0.0.1:9/v1", "model": "m"}
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match=r"OPENAI_API_KEY.*dummy"):
        OpenAIJudge(**ok)
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        OpenAIJudge(**ok)
    monkeypatch.setenv("OPENAI_API_KEY", "dummy")
    for bad in (None, "", "  "):
        with pytest.raises(ValueError, match="params judge.model"):
            OpenAIJudge(base_url=ok["base_url"], model=bad)
    with pytest.raises(ValueError, match="params judge.base_url"):
        OpenAIJudge(base_url="127.0.0.1:8000/v1", model="m")
    with pytest.raises(ValueError, match="params judge.timeout"):
        OpenAIJudge(**ok, timeout=0)
    with pytest.raises(ValueError, match="params judge.max_retries"):
        OpenAIJudge(**ok, max_retries=-1)
    with pytest.raises(ValueError, match="params judge.max_tokens"):
        OpenAIJudge(**ok, max_tokens=0)
    # null base_url: OpenAI's (nothing is sent here); credentials in a URL are not shown
    assert OpenAIJudge(base_url=None, model="m").describe()["base_url"] == "https://api.openai.com/v1"
    assert OpenAIJudge(base_url="http://u:pw@127.0.0.1:9/v1?token=t", model="m").describe()["base_url"] \
        == "http://127.0.0.1:9/v1"
    # the profile's judge section builds it
    j = make_judge({"backend": "openai", **ok, "cache_dir": str(tmp_path), "concurrency": 3, "max_tokens": 32})
    assert isinstance(j, OpenAIJudge) and j.describe() == {"backend": "openai", "model": "m", "base_url": ok["base_url"]}
    assert (j.concurrency, j.reask, j.max_retries, j.max_tokens, j.timeout) == (3, 2, 2, 32, 60.0)


# ---- limits: a judge that cannot answer stops, says why, keeps what it judged ------------------------------
def test_a_hanging_server_stops_at_the_deadline(fake, tmp_path):
    fake.plan = lambda n: ["slow"]           # never answers within the request timeout
    judge = judge_for(fake, tmp_path / "cache", concurrency=4, deadline_s=2.0)
    t0 = time.monotonic()
    res = judge.judge([rate_request(i) for i in range(40)], progress=False)
    took = time.monotonic() - t0
    # without the deadline: 40 items x 3 asks x 2 tries x 0.5 s over 4 workers, 30 s; with it, the deadline
    # plus at most the one request timeout that was in flight
    assert took < 2.0 + TIMEOUT + 1.0, took
    assert all(r.verdict is None for r in res) and "deadline of 2 s" in judge.stats["stopped"]
    assert sum(r.error.startswith("stopped:") for r in res) > 20 and judge.stats["failed_items"] == 40


def test_a_failing_server_trips_the_breaker(fake, tmp_path):
    for answer in ("500", "junk"):           # transport failures and answers without a rating alike
        fake.log.clear()
        fake.plan = lambda n, a=answer: [a]
        judge = judge_for(fake, tmp_path / answer, concurrency=3, max_retries=0, max_consecutive_failures=5)
        res = judge.judge([rate_request(i) for i in range(60)], progress=False)
        assert "5 requests in a row failed" in judge.stats["stopped"], judge.stats
        assert 5 <= fake.count() <= 5 + 3      # the five, plus what was in flight when the fifth failed
        assert all(r.verdict is None for r in res) and judge.stats["requests_sent"] == fake.count()
    # a success resets the count: failures spread between good answers never trip it
    fake.log.clear()
    fake.plan = lambda n: ["500", "ok"]
    judge = judge_for(fake, tmp_path / "mixed", concurrency=1, max_retries=0, max_consecutive_failures=2)
    res = judge.judge([rate_request(i) for i in range(6)], progress=False)
    assert [r.verdict for r in res] == [rating(i) for i in range(6)] and judge.stats["stopped"] is None


@pytest.fixture
def default_sigint():
    """SIGINT handled as at a terminal (KeyboardInterrupt), whatever an earlier test in this worker's
    process left as its handler: `_thread.interrupt_main` does nothing under SIG_IGN or SIG_DFL."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_ctrl_c_stops_sending_and_keeps_what_was_judged(fake, tmp_path, default_sigint):
    import _thread

    fake.delay = lambda n: 0.1
    judge = judge_for(fake, tmp_path / "cache", concurrency=2)
    threading.Timer(0.6, _thread.interrupt_main).start()
    with pytest.raises(KeyboardInterrupt):
        judge.judge([rate_request(i) for i in range(60)], progress=False)
    sent = fake.count()
    time.sleep(0.5)
    assert fake.count() <= sent + 2 and sent < 30       # nothing new after the interrupt but what was in flight
    assert judge.stats["stopped"] == "interrupted"
    cached = len(DiskCache(tmp_path / "cache"))
    assert cached >= 1
    fake.log.clear()                                     # a rerun asks only what was not judged
    judge_for(fake, tmp_path / "cache", concurrency=4).judge([rate_request(i) for i in range(60)], progress=False)
    assert fake.count() == 60 - cached


def test_kit_judge_score_stops_exits_non_zero_and_says_why(fake, tmp_path, capsys):
    import shutil
    from pathlib import Path

    from kit.cli import main
    from kit.data import coda_vqa

    ref = tmp_path / "coda" / "CODA-LM" / "Val"
    shutil.copytree(Path(__file__).parent / "fixtures" / "coda_lm", tmp_path / "coda")
    items = coda_vqa.build_vqa(ref, {t: "q" for t in coda_vqa.TASKS})
    for t, its in items.items():
        coda_vqa.write_answers(tmp_path / "pred", t, its, [f"item-{i} {it.answer}" for i, it in enumerate(its)])
    args = ["judge", "score", str(tmp_path / "pred"), "--reference", str(ref), "--backend", "openai",
            "--base-url", fake.url, "--model", "judge-model", "--cache", str(tmp_path / "cache"),
            "--request-timeout", str(TIMEOUT)]
    fake.plan = lambda n: ["500"]
    assert main([*args, "--max-consecutive-failures", "3"]) == 1
    cap = capsys.readouterr()
    assert "coverage 0.000 < 1" in cap.err and "3 requests in a row failed" in cap.err and "--allow-partial" in cap.err
    sent = json.loads(cap.out)["judge"]["requests_sent"]    # each one the client's 3 tries of a 500
    assert sent <= 3 + 8 and fake.count() == 3 * sent       # the three, plus what was in flight (8 at once)
    fake.plan = lambda n: ["slow"]
    t0 = time.monotonic()
    assert main([*args, "--deadline", "1.5", "--allow-partial"]) == 0
    assert time.monotonic() - t0 < 1.5 + TIMEOUT + 1.5 and "deadline of 1.5 s" in capsys.readouterr().err
    fake.plan = lambda n: ["ok"]
    assert main(args) == 0                               # all judged: exit 0
    assert json.loads(capsys.readouterr().out)["coverage"] == 1
