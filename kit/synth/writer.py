"""Refine and self-instruct (paper A, steps 4-5): from an image's raw caption, named regions and
retrieved descriptions, a refined caption and the three CODA-LM tasks' answers.

- `template` (offline; the tiny profile's): a stand-in for the LLM, stated as such. It composes
  the texts from the inputs alone: each object's colour, name and place from its box, the retrieved
  description's first sentence for what it is and its second for what it means for driving, and a
  driving suggestion from where the objects stand. It knows nothing the tools did not find.
- `openai`: any OpenAI-compatible chat endpoint (the kit's prompt files in kit/synth/prompts, or
  the user's). The answer is asked for as JSON and validated (the keys, one answer per object id);
  a malformed answer is asked again, up to `reask` times, and counted. Answers are cached on disk
  by model and request (kit.judge.cache.DiskCache), so a rerun or a resumed pool pays for nothing
  twice. The key is read from $OPENAI_API_KEY only.

Every writer returns {"caption", "general_perception", "region_perception": {id: text}, "driving_suggestion"}.
"""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

from kit.data.coda_lm import region_class
from kit.judge.cache import DiskCache
from kit.judge.openai_judge import KEY_ENV, _redacted

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
BACKENDS = ("template", "openai")
OUTPUT_KEYS = ("caption", "general_perception", "region_perception", "driving_suggestion")


# --- where an object is, from its box ------------------------------------------------------------

def place(box, W: int, H: int, name: str) -> str:
    """The object's place relative to the ego car, from its box alone: lights hang above the road,
    signs stand at its side; anything else is in the lane its bottom centre falls in (the ego lane
    is the middle third of the image's width at the bottom)."""
    x, y, w, h = box
    cx = (x + w / 2) / W
    cls = region_class(name)
    if cls == "traffic_light":
        return "above the road"
    if cls == "traffic_sign":
        return f"on the {'right' if cx >= 0.5 else 'left'} side of the road"
    if cx < 0.36:
        return "in the left lane"
    if cx > 0.64:
        return "in the right lane"
    return "ahead in the ego lane"


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _sentences(text: str) -> list[str]:
    import re

    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text or "") if s.strip()]


def object_phrase(o: Mapping) -> str:
    """e.g. 'a blue car', 'a traffic cone': the colour only where it tells objects apart (vehicles, people)."""
    noun = str(o["name"]).replace("_", " ")
    colour = o.get("colour") if region_class(o["name"]) in ("vehicle", "vru") else None
    return _article(f"{colour} {noun}" if colour else noun)


class TemplateWriter:
    """Offline stand-in for the LLM: composes from the inputs (see the module's docstring)."""

    backend = "template"

    def __init__(self):
        self.stats = Counter()

    def describe(self) -> dict:
        return {"backend": self.backend}

    def write(self, inp: Mapping) -> dict:
        W, H = inp["width"], inp["height"]
        regions, general, lines = {}, [], []
        stop_why, not_sides, go_why = [], set(), []
        for o in inp["objects"]:
            where = o.get("place") or place(o["box"], W, H, o["name"])
            phr = object_phrase(o)
            sents = _sentences(o.get("description") or "")
            what, advice = (sents[0] if sents else ""), (" ".join(sents[1:2]) if len(sents) > 1 else "")
            head = f"{phr[0].upper()}{phr[1:]} is {where}."
            if region_class(o["name"]) == "traffic_light":
                lamp = o.get("colour")
                head = f"A traffic light {where} shows {lamp}." if lamp in ("red", "yellow", "green") else head
                if lamp in ("red", "yellow"):
                    stop_why.append("the traffic light is not green")
                elif lamp == "green":
                    go_why.append("the light is green")
            elif where == "ahead in the ego lane":
                # nearer objects stand lower in the image: one whose box reaches the lowest 30% is close
                close = o["box"][1] + o["box"][3] >= 0.7 * H
                if region_class(o["name"]) == "vehicle" and not close:
                    head = f"{phr[0].upper()}{phr[1:]} is far ahead in the ego lane."
                    go_why.append(f"you can follow {phr} ahead")
                    advice = "It is far ahead, so the ego car can follow it at a safe distance."
                else:
                    stop_why.append(f"{phr} is close ahead in the lane" if close else f"{phr} is in the lane ahead")
            elif where in ("in the left lane", "in the right lane"):
                not_sides.add(where.split()[-2])
            elif region_class(o["name"]) == "traffic_sign" and o.get("colour") == "red":
                stop_why.append("there is a stop sign")
            regions[str(o["id"])] = " ".join(t for t in (head, advice or what) if t)
            general.append(head)
        cap = (inp.get("caption") or "").strip()
        new = [g for g in general if g.split(" is ")[0].lower() not in cap.lower()]
        refined = " ".join([cap] + new).strip()
        if stop_why:
            lines.append("Slow down and stop, because " + " and ".join(dict.fromkeys(stop_why)) + ".")
        else:
            lines.append("Keep moving forward" + (", since " + " and ".join(go_why) if go_why else
                                                   ", since the road ahead is clear") + ".")
        for side in sorted(not_sides):
            lines.append(f"Do not move {side}: the {side} lane is occupied.")
        self.stats["images"] += 1
        return {"caption": refined, "general_perception": refined, "region_perception": regions,
                "driving_suggestion": " ".join(lines)}

    def write_many(self, inputs: Sequence[Mapping], progress: bool = True) -> list[dict]:
        return [self.write(i) for i in inputs]


# --- the LLM path --------------------------------------------------------------------------------

class WriterAnswerError(ValueError):
    """The LLM's answer is not the JSON asked for; the message says what is wrong (sent back when re-asking)."""


def validate(text: str | None, object_ids: Sequence[str]) -> dict:
    """The writer's answer as a dict, or WriterAnswerError naming what is missing or malformed."""
    t = (text or "").strip()
    if t.startswith("```"):  # a fenced block: take its body
        t = t.strip("`")
        t = t[t.find("{"):] if "{" in t else t
    start, end = t.find("{"), t.rfind("}")
    if start < 0 or end < start:
        raise WriterAnswerError("the answer holds no JSON object")
    try:
        d = json.loads(t[start:end + 1])
    except json.JSONDecodeError as e:
        raise WriterAnswerError(f"the JSON object does not parse ({e.msg} at character {e.pos})") from None
    if not isinstance(d, dict):
        raise WriterAnswerError("expected a JSON object")
    for k in ("caption", "general_perception", "driving_suggestion"):
        if not isinstance(d.get(k), str) or not d[k].strip():
            raise WriterAnswerError(f"field '{k}': expected a non-empty string")
    rp = d.get("region_perception")
    if not isinstance(rp, dict):
        raise WriterAnswerError("field 'region_perception': expected an object keyed by object id")
    rp = {str(k): v for k, v in rp.items()}
    want = {str(i) for i in object_ids}
    if set(rp) != want:
        raise WriterAnswerError(f"field 'region_perception': expected exactly the object ids {sorted(want)}, "
                                f"got {sorted(rp)}")
    bad = [k for k, v in rp.items() if not isinstance(v, str) or not v.strip()]
    if bad:
        raise WriterAnswerError(f"field 'region_perception.{bad[0]}': expected a non-empty string")
    return {"caption": d["caption"].strip(), "general_perception": d["general_perception"].strip(),
            "region_perception": {k: rp[k].strip() for k in sorted(rp, key=str)},
            "driving_suggestion": d["driving_suggestion"].strip()}


def load_writer_prompts(prompts_dir=None) -> dict:
    out = {}
    for name in ("writer.system.txt", "writer.user.txt"):
        p = Path(prompts_dir).expanduser() / name if prompts_dir else PROMPTS_DIR / name
        if not p.is_file():
            raise FileNotFoundError(f"params synth.writer.prompts_dir: {p} not found; expected writer.system.txt "
                                    "and writer.user.txt (copy kit/synth/prompts/ to start)")
        out[name.split(".")[1]] = p.read_text(encoding="utf-8")
    return out


def user_message(inp: Mapping, template: str) -> str:
    objs = "\n".join(
        f"- id {o['id']}: {str(o['name']).replace('_', ' ')}, box {[int(v) for v in o['box']]}, "
        f"{o.get('place') or place(o['box'], inp['width'], inp['height'], o['name'])}, colour {o.get('colour', '?')}; "
        f"description: {o.get('description') or '(none found)'}" for o in inp["objects"]) or "(none)"
    return template.format(file_name=inp["file_name"], width=inp["width"], height=inp["height"],
                           caption=inp.get("caption") or "(none)", objects=objs)


class OpenAIWriter:
    """The refine + self-instruct LLM behind any OpenAI-compatible endpoint."""

    backend = "openai"

    def __init__(self, cfg: Mapping, cache_dir):
        from urllib.parse import urlsplit

        model, base_url = cfg.get("model"), cfg.get("base_url")
        if not isinstance(model, str) or not model.strip():
            raise ValueError("params synth.writer.model: the openai writer needs the LLM's name (e.g. gpt-4o-mini, "
                             f"or the model a local server serves), got {model!r}")
        if base_url is not None and (not isinstance(base_url, str) or urlsplit(base_url).scheme not in ("http", "https")):
            raise ValueError(f"params synth.writer.base_url: expected an http(s) URL such as http://127.0.0.1:8000/v1 "
                             f"(or null for OpenAI's), got {base_url!r}")
        key = os.environ.get(KEY_ENV)
        if not key or not key.strip():
            raise RuntimeError(f"the openai writer reads its API key from the environment variable {KEY_ENV}, which is "
                               f"not set; export it (a local server that checks no key still needs a dummy value, "
                               f"e.g. {KEY_ENV}=none). It is never read from params.")
        import openai

        self.model = model.strip()
        self.prompts = load_writer_prompts(cfg.get("prompts_dir"))
        self.temperature = float(cfg.get("temperature") or 0.0)
        self.max_tokens = cfg.get("max_tokens")
        self.reask = int(cfg.get("reask", 2))
        self.concurrency = max(1, int(cfg.get("concurrency", 4)))
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=float(cfg.get("timeout", 60)),
                                     max_retries=int(cfg.get("max_retries", 2)))
        del key

        self.base_url = _redacted(str(self._client.base_url)).rstrip("/")
        self.cache = DiskCache(cache_dir)
        self.stats = Counter()
        self._lock = threading.Lock()

    def describe(self) -> dict:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def _count(self, **kw) -> None:
        with self._lock:
            self.stats.update(kw)

    def _chat(self, messages: list[dict]) -> str:
        key = {"backend": "openai-writer", "model": self.model, "temperature": self.temperature,
               "max_tokens": self.max_tokens, "messages": messages}
        hit = self.cache.get(key)
        if hit is not None and isinstance(hit.get("text"), str):
            self._count(cached=1)
            return hit["text"]
        kw = {"max_tokens": int(self.max_tokens)} if self.max_tokens else {}
        resp = self._client.chat.completions.create(model=self.model, messages=messages,
                                                    temperature=self.temperature, **kw)
        self._count(requests_sent=1)
        choices = getattr(resp, "choices", None) or []
        text = (getattr(getattr(choices[0], "message", None), "content", None) if choices else None) or ""
        self.cache.put(key, {"text": text})
        return text

    def write(self, inp: Mapping) -> dict:
        ids = [str(o["id"]) for o in inp["objects"]]
        messages = [{"role": "system", "content": self.prompts["system"]},
                    {"role": "user", "content": user_message(inp, self.prompts["user"])}]
        err = None
        for attempt in range(1 + self.reask):
            text = self._chat(messages)
            try:
                out = validate(text, ids)
                self._count(images=1)
                return out
            except WriterAnswerError as e:
                err = e
                self._count(malformed=1)
                # ask again, saying what was wrong (a new request, so the cache keeps both answers)
                messages = messages + [{"role": "assistant", "content": text},
                                       {"role": "user", "content": f"That answer is not usable: {e}. Answer again with "
                                                                   "only the JSON object, exactly as specified."}]
        self._count(failed=1)
        raise WriterAnswerError(f"{inp['file_name']}: no valid answer after {1 + self.reask} tries (last: {err})")

    def write_many(self, inputs: Sequence[Mapping], progress: bool = True) -> list[dict | None]:
        """Answers in order; an image whose every try was malformed gets None (counted, left out)."""
        def one(inp):
            try:
                return self.write(inp)
            except WriterAnswerError:
                return None
        with ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(one, inputs))


def make_writer(cfg: Mapping, cache_dir):
    b = cfg.get("backend")
    if b == "template":
        return TemplateWriter()
    if b == "openai":
        return OpenAIWriter(cfg, cache_dir)
    raise ValueError(f"params synth.writer.backend: expected one of {', '.join(BACKENDS)}, got {b!r}")
