"""The judge's prompts: system prompts per task, few-shot examples, and the message layout.

The kit ships its own wording in kit/judge/texts/ (the same criteria as CODA-LM's evaluators:
objects found, none invented, the same explanation of why they matter; `Rating: [[N]]`; and for
pairwise judging FastChat's `[[A]]`/`[[B]]`/`[[C]]`). `judge.prompts_dir` points at a folder of a
user's own files with the same names; each file found there replaces the kit's:

    <task>.system.txt       task = general_perception | region_perception | driving_suggestion
    <task>.few_shot.json    [{"reference", "prediction", "response"}, ...] (user/assistant turns before the item)
    pairwise.system.txt     the pairwise judge
    templates.json          {"rate": "...{reference}...{prediction}...", "pair": "...{question}...{answer_a}...{answer_b}..."}

As in CODA-LM's evaluators, general perception and driving suggestion get two few-shot examples
(a high and a low rating), region perception none.
"""
from __future__ import annotations

import json
from pathlib import Path

from kit.judge.request import TASKS, JudgeRequest

KIT_PROMPTS = Path(__file__).resolve().parent / "texts"
FIELDS = {"rate": ("reference", "prediction"), "pair": ("question", "reference", "answer_a", "answer_b")}


def _read(name: str, user_dir: Path | None) -> tuple[str, Path] | None:
    for d in ([user_dir] if user_dir else []) + [KIT_PROMPTS]:
        p = d / name
        if p.is_file():
            return p.read_text(encoding="utf-8"), p
    return None


def load_prompts(prompts_dir=None) -> dict:
    """{"system": {task|"pairwise": text}, "few_shot": {task: [...]}, "templates": {...}, "files": {...}}."""
    user = Path(prompts_dir).expanduser().resolve() if prompts_dir else None
    if user is not None and not user.is_dir():
        raise FileNotFoundError(f"params judge.prompts_dir: {user} is not a folder; expected one holding "
                                "<task>.system.txt / <task>.few_shot.json / pairwise.system.txt / templates.json")
    out: dict = {"system": {}, "few_shot": {}, "templates": {}, "files": {}}
    for key in (*TASKS, "pairwise"):
        text, path = _read(f"{key}.system.txt", user)
        out["system"][key] = text.strip()
        out["files"][f"{key}.system.txt"] = str(path)
    for task in TASKS:
        found = _read(f"{task}.few_shot.json", user)
        shots = []
        if found:
            text, path = found
            try:
                shots = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
            if not isinstance(shots, list) or not all(
                    isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("reference", "prediction", "response"))
                    for s in shots):
                raise ValueError(f"{path}: expected a list of {{'reference', 'prediction', 'response'}} strings")
            out["files"][f"{task}.few_shot.json"] = str(path)
        out["few_shot"][task] = shots
    text, path = _read("templates.json", user)
    try:
        tpl = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    for kind, fields in FIELDS.items():
        t = tpl.get(kind) if isinstance(tpl, dict) else None
        if not isinstance(t, str) or any("{" + f + "}" not in t for f in fields):
            raise ValueError(f"{path}: field '{kind}': expected a string with the placeholders "
                             + ", ".join("{" + f + "}" for f in fields))
    out["templates"] = tpl
    out["files"]["templates.json"] = str(path)
    return out


def _fill(template: str, **values: str) -> str:
    # str.replace, not str.format: references and answers may hold braces
    for k, v in values.items():
        template = template.replace("{" + k + "}", v)
    return template


def messages_for(request: JudgeRequest, prompts: dict) -> list[dict]:
    """The chat messages a judge is asked (system, few-shot turns, the item)."""
    tpl = prompts["templates"]
    if request.kind == "pair":
        return [{"role": "system", "content": prompts["system"]["pairwise"]},
                {"role": "user", "content": _fill(tpl["pair"], question=request.question, reference=request.reference,
                                                  answer_a=request.answer_a, answer_b=request.answer_b)}]
    msgs = [{"role": "system", "content": prompts["system"][request.task]}]
    for shot in prompts["few_shot"].get(request.task, []):
        msgs.append({"role": "user", "content": _fill(tpl["rate"], reference=shot["reference"], prediction=shot["prediction"])})
        msgs.append({"role": "assistant", "content": shot["response"]})
    msgs.append({"role": "user", "content": _fill(tpl["rate"], reference=request.reference, prediction=request.prediction)})
    return msgs
