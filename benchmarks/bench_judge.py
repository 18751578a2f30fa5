"""The openai judge's concurrency and cache, against a local chat-completions server.

A threaded HTTP server on 127.0.0.1 (started here, stopped at the end; no other host is contacted)
answers every request after a fixed delay (`DELAY`, standing in for a judge model's latency) with a
`Rating: [[N]]`. The same N items (CODA-LM-style rating requests over the three tasks) are judged:
- `concurrency_1`: one request at a time (empty cache);
- `concurrency_8`: eight in flight (another empty cache); `speedup` = seconds(1) / seconds(8), at
  most 8 (`ideal_speedup`) when the server's delay is all the cost;
- `warm_cache`: the concurrency-8 run again on its cache: `requests_sent` must be 0.
The ratings of all three runs must agree (`same_ratings`). A dummy key is set for the run (the
user's own OPENAI_API_KEY is not sent, even to the local server). Writes
benchmarks/results/bench_judge.json. A few seconds.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_ITEMS = 64
DELAY = 0.05          # seconds the server takes per answer
CONCURRENCY = (1, 8)
TASKS = ("general_perception", "region_perception", "driving_suggestion")


def rating(i: int) -> int:
    return i * 7 % 10 + 1


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real server
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall between them

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        with self.server.lock:
            self.server.requests += 1
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"error": {"message": f"no route {self.path}"}})
            return
        time.sleep(DELAY)
        m = re.search(r"item-(\d+)", body["messages"][-1]["content"])
        text = f"The prediction matches the reference. Rating: [[{rating(int(m.group(1)))}]]"
        self._send(200, {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112}})

    def _send(self, status: int, obj: dict) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _requests():
    from kit.judge.request import JudgeRequest

    return [JudgeRequest("rate", TASKS[i % 3], reference=f"Reference of item-{i}: a truck ahead in the left lane.",
                         prediction=f"Prediction of item-{i}: a truck ahead.") for i in range(N_ITEMS)]


def _run(server, url: str, cache_dir: Path, concurrency: int, reqs) -> tuple[dict, list]:
    from kit.judge.cache import DiskCache
    from kit.judge.openai_judge import OpenAIJudge

    judge = OpenAIJudge(base_url=url, model="bench-judge", cache=DiskCache(cache_dir), concurrency=concurrency,
                        reask=2, timeout=10, max_retries=0)
    before = server.requests
    t0 = time.perf_counter()
    res = judge.judge(reqs, progress=False)
    sec = time.perf_counter() - t0
    out = {"concurrency": concurrency, "seconds": round(sec, 3), "items_per_second": round(len(reqs) / sec, 1),
           "server_requests": server.requests - before,
           **{k: judge.stats[k] for k in ("requests_sent", "cache_hits", "failed_items")}}
    return out, [r.verdict for r in res]


def main() -> dict:
    t0 = time.perf_counter()
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = "bench-dummy-key"
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        reqs = _requests()
        with tempfile.TemporaryDirectory(prefix="bench_judge_") as tmp:
            runs, ratings = {}, {}
            for c in CONCURRENCY:
                runs[f"concurrency_{c}"], ratings[c] = _run(server, url, Path(tmp) / f"cache_{c}", c, reqs)
            warm, warm_ratings = _run(server, url, Path(tmp) / f"cache_{CONCURRENCY[-1]}", CONCURRENCY[-1], reqs)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved
    lo, hi = (runs[f"concurrency_{c}"] for c in CONCURRENCY)
    expected = [rating(i) for i in range(N_ITEMS)]
    res = {
        "items": N_ITEMS, "server_delay_seconds": DELAY, "server": "127.0.0.1 (local, started by the benchmark)",
        **runs,
        "speedup": round(lo["seconds"] / hi["seconds"], 2),
        "ideal_speedup": CONCURRENCY[-1],
        "serial_lower_bound_seconds": round(N_ITEMS * DELAY, 3),
        "warm_cache": warm,
        "warm_cache_sends_nothing": warm["server_requests"] == 0 and warm["requests_sent"] == 0,
        "same_ratings": all(r == expected for r in ratings.values()) and warm_ratings == expected,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    from kit.runs import write_json

    write_json(HERE / "results" / "judge.json", res)  # atomic; creates results/
    return res


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
