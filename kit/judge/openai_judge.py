"""The `openai` judge backend: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, ...).

    judge: {backend: openai, base_url: null, model: gpt-4o-2024-05-13, timeout: 60, max_retries: 2, ...}

- The key is read from the environment variable OPENAI_API_KEY only (never from params), and is
  held by the `openai` client alone: it is not an attribute of the judge, not in `describe()`, not in
  the cache (kit.judge.cache stores answers only) and not in any message this module raises.
  A local server that checks no key still needs the variable set (to any dummy value).
- `base_url` null: the client's default (`$OPENAI_BASE_URL` when set, else https://api.openai.com/v1).
- Each answer is asked at temperature 0 (and `max_tokens` when set).
- `timeout` bounds one request; `deadline_s` and `max_consecutive_failures` bound the whole judging
  (kit.judge.base): a request asked near the deadline gets only the time left, without retries.

What fails, and what happens then:

- timeouts, connection errors, 408, 409, 429 and 5xx are retried by the client itself
  (`max_retries` times, with its backoff and the server's Retry-After); what still fails raises
  `TransientJudgeError`, which kit.judge.base counts as a transport failure and answers by asking
  again (one of its `1 + reask` attempts). An item whose every attempt fails comes back with
  `verdict=None` and its error.
- every other 4xx (400, 401, 403, 404, 422, ...) says the request itself is wrong: a bad key, a
  model the server does not have, a base_url that is not the API, a parameter it refuses. Asking
  again cannot help and would fail every item the same way, so it raises `JudgeRequestError` at
  once (the status, the server's message and the param to check) and stops the evaluation; from
  then on this judge sends nothing more (the other threads' items raise the same error without a
  request). The answers had so far are in the cache, so a corrected rerun asks only the rest.
  The price: a 400 that concerns one item only (its prompt too long for the model, say) also
  stops the run, with a message naming the item's task.
- a 200 whose body is no chat completion (base_url pointing at a web page, not at the API) also
  raises `JudgeRequestError`; a completion with no text is an unparsable answer (asked again).
"""
from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit, urlunsplit

from kit.judge.base import Judge
from kit.judge.request import JudgeRequest, TransientJudgeError

KEY_ENV = "OPENAI_API_KEY"

# what to check for each refused status
_HINTS = {
    400: "the server refused the request; check params judge.model and judge.max_tokens "
         "(or the item's prompt length for this model)",
    401: f"the server refused the key; check ${KEY_ENV} (and params judge.base_url: the key must be this server's)",
    403: f"the key may not use this model or endpoint; check ${KEY_ENV} and params judge.model",
    404: "no such model or endpoint; check params judge.model and judge.base_url "
         "(an OpenAI-compatible base_url usually ends in /v1)",
    405: "this URL takes no chat requests; check params judge.base_url (usually ends in /v1)",
    413: "the request is too large for the server; check params judge.max_tokens and the item's prompt length",
    422: "the server could not process the request; check params judge.model and judge.max_tokens",
}


class JudgeRequestError(RuntimeError):
    """The endpoint refused the request in a way asking again cannot fix (a 4xx other than 408/409/429)."""


def _redacted(url: str) -> str:
    """`url` without user:password@ or a query string (either could hold a secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class OpenAIJudge(Judge):
    backend = "openai"

    def __init__(self, *, base_url=None, model=None, prompts=None, cache=None, concurrency: int = 8,
                 reask: int = 2, timeout: float = 60, max_retries: int = 2, max_tokens=None,
                 deadline_s: float | None = None, max_consecutive_failures: int | None = None):
        if not isinstance(model, str) or not model.strip():
            raise ValueError("params judge.model: expected the judge model's name for the openai backend "
                             f"(e.g. gpt-4o-2024-05-13, or the model a local server serves), got {model!r}")
        if base_url is not None:
            if not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https") \
                    or not urlsplit(base_url).hostname:
                raise ValueError("params judge.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1 "
                                 f"(or null for OpenAI's), got {base_url!r}")
        try:
            timeout = float(timeout)
        except (TypeError, ValueError):
            raise ValueError(f"params judge.timeout: expected seconds > 0, got {timeout!r}") from None
        if not timeout > 0:
            raise ValueError(f"params judge.timeout: expected seconds > 0, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"params judge.max_retries: expected an integer >= 0, got {max_retries!r}")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise ValueError(f"params judge.max_tokens: expected a positive integer or null, got {max_tokens!r}")
        key = os.environ.get(KEY_ENV)
        if not key or not key.strip():
            raise RuntimeError(f"the openai judge reads its API key from the environment variable {KEY_ENV}, which "
                               "is not set (or empty); export it before running (a local server that checks no key "
                               f"still needs a dummy value, e.g. {KEY_ENV}=none). It is never read from params.")
        import openai

        super().__init__(prompts=prompts, cache=cache, concurrency=concurrency, reask=reask, deadline_s=deadline_s,
                         max_consecutive_failures=max_consecutive_failures)
        self.model = model.strip()
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        # the key lives in the client only (it sends it as the Authorization header)
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout, max_retries=max_retries)
        del key
        self.base_url = _redacted(str(self._client.base_url)).rstrip("/")
        self._fatal: JudgeRequestError | None = None  # set by the first refused request: send nothing more
        self._fatal_lock = threading.Lock()

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r})"

    def _scrub(self, text) -> str:
        """`text` with the key blanked out (a server may echo the key it refused)."""
        text, key = str(text), self._client.api_key
        return text.replace(key, "<$" + KEY_ENV + ">") if isinstance(key, str) and key else text

    def _refuse(self, err: JudgeRequestError) -> JudgeRequestError:
        with self._fatal_lock:
            if self._fatal is None:
                self._fatal = err
        return err

    def _ask(self, messages: list[dict], request: JudgeRequest) -> tuple[str, dict]:
        import openai

        if self._fatal is not None:
            self._count(requests_sent=-1)  # base counted a request this call does not send
            raise JudgeRequestError(f"{self._fatal} (raised by an earlier request; nothing more was sent)")
        kw = {"max_tokens": self.max_tokens} if self.max_tokens is not None else {}
        client, left = self._client, self.time_left()
        if left is not None and left < (1 + self.max_retries) * self.timeout:  # near the deadline: what is left
            client = client.with_options(timeout=max(left, 0.1), max_retries=0)
        try:
            resp = client.chat.completions.create(model=self.model, messages=messages, temperature=0, **kw)
        except openai.APITimeoutError as e:  # before APIConnectionError: it is one
            raise TransientJudgeError(f"timed out after {self.timeout:g} s ({1 + self.max_retries} tries)") from e
        except openai.APIConnectionError as e:
            raise TransientJudgeError(self._scrub(f"cannot reach {self.base_url} ({1 + self.max_retries} tries): {e}")) from e
        except openai.APIStatusError as e:
            status = int(e.status_code)
            what = f"HTTP {status} ({type(e).__name__}) from {self.base_url}"
            if status >= 500 or status in (408, 409, 429):
                raise TransientJudgeError(self._scrub(f"{what} after {1 + self.max_retries} tries: {e.message}")) from e
            hint = _HINTS.get(status, "check params judge.base_url, judge.model and $" + KEY_ENV)
            raise self._refuse(JudgeRequestError(self._scrub(
                f"the judge endpoint refused the request: {what}, model {self.model!r}, task {request.task} "
                f"({request.kind}): {e.message}. Not retried: {hint}."))) from None
        choices = getattr(resp, "choices", None)
        if not isinstance(choices, list):
            raise self._refuse(JudgeRequestError(
                f"{self.base_url} answered with something other than a chat completion "
                f"({type(resp).__name__}); check params judge.base_url (an OpenAI-compatible one usually ends in /v1)"))
        message = getattr(choices[0], "message", None) if choices else None
        text = getattr(message, "content", None) or ""
        if not isinstance(text, str):  # content parts instead of text: nothing a rating can be read from
            text = ""
        usage = {}
        if getattr(resp, "usage", None) is not None:
            usage = {"prompt_tokens": int(resp.usage.prompt_tokens or 0),
                     "completion_tokens": int(resp.usage.completion_tokens or 0)}
        return text, usage
