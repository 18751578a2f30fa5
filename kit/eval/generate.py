"""Batched greedy generation for evaluation, and BDD-OIA predictions written as predictions.jsonl.

transformers' `generate` does the decoding; what it does not do is batch a list of (images, prompt)
items through a VLM chat template with left padding and a progress bar, or turn the answers into
label records that resume after a crash, so that part is here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

from tqdm.auto import tqdm

from kit import dist, runs
from kit.eval.parse import parse_answer
from kit.labels import ANSWER_PROMPT
from kit.train.rows import chat_prompt


def generate(model, processor, items: Sequence[tuple[Sequence, str]], *, batch_size: int,
             max_new_tokens: int, do_sample: bool = False, desc: str = "generate",
             progress: bool = True, **gen_kwargs) -> list[str]:
    """Answers for `items` = [(images, prompt), ...], in order. Greedy unless `do_sample`.

    Prompts are rendered with the processor's chat template (generation prompt added), batched with
    left padding so every row's answer starts at the same column, and decoded without special tokens.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"generate: batch_size={batch_size}; expected >= 1 (params eval.batch_size)")
    tok = getattr(processor, "tokenizer", processor)
    old_side = tok.padding_side
    tok.padding_side = "left"
    device = getattr(model, "device", None) or next(model.parameters()).device
    # the compute dtype: a 4-/8-bit model's first parameters may be integer-packed weights
    dtype = getattr(model, "dtype", None)
    if dtype is None or not dtype.is_floating_point:
        dtype = next(p.dtype for p in model.parameters() if p.dtype.is_floating_point)
    outs: list[str] = []
    was_training = model.training
    model.eval()
    try:
        bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
        for i in range(0, len(items), batch_size):
            chunk = items[i:i + batch_size]
            # the generation prompt of kit.train.rows (the same turn the SFT rows train on)
            texts = [chat_prompt(processor, len(imgs), p) for imgs, p in chunk]
            images = [[im.convert("RGB") for im in imgs] for imgs, _ in chunk]
            enc = processor(text=texts, images=images if any(images) else None, return_tensors="pt",
                            padding=True)
            enc = enc.to(device)
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(dtype)
            kw = dict(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample),
                      pad_token_id=tok.pad_token_id)
            if not do_sample:
                kw.update(temperature=None, top_p=None, top_k=None)
            kw.update(gen_kwargs)
            with torch.no_grad():
                gen = model.generate(**enc, **kw)
            new = gen[:, enc["input_ids"].shape[1]:]
            outs += [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
            bar.update(len(chunk))
        bar.close()
    finally:
        tok.padding_side = old_side
        if was_training:
            model.train()
    return outs


def _record(sample, output: str) -> dict:
    p = parse_answer(output)
    return {"id": sample.id, "output": output, "pred_actions": p.actions, "pred_reasons": p.reasons,
            "gt_actions": list(map(int, sample.actions)), "gt_reasons": list(map(int, sample.reasons)),
            "unparseable": p.unparseable, "image_paths": [str(f) for f in sample.frame_paths]}


def generate_records(model, processor, samples: Sequence, out_path: str | os.PathLike, meta: Mapping, *,
                     items: Callable[[Sequence], list], records: Callable[[Sequence, list, list[str]], list[dict]],
                     batch_size: int, max_new_tokens: int, desc: str = "generate") -> list[dict]:
    """Greedy answers for `samples`, a record per sample (in order) written to `out_path` (jsonl).

    `items(part)` gives the (images, prompt) items of a chunk of samples (frames are loaded per
    chunk, never a whole split at once); `records(part, items, outputs)` turns the chunk's answers
    into records, each with the sample's "id".

    Reuse and resume: a complete `out_path` whose meta (`meta` plus the ids and max_new_tokens, in
    `<stem>.meta.json`) matches is returned as is; finished records are kept in `<out_path>.partial`
    after each chunk, and a rerun with the same meta generates only the rest. Put the checkpoint
    that answers in `meta` (e.g. as "tag") so a retrained model never reuses old answers. When the
    meta changes, the old answers are deleted before the new meta is written: a run killed after
    that point resumes the new model's partial answers, never returns the old model's file.

    Under `accelerate launch` with N processes each answers its block of what is left (kit.dist),
    keeping its own `<out_path>.partial.<rank>`; the records are gathered in order on every process
    and the main process writes `out_path`.
    """
    out_path = Path(out_path)
    meta_path = out_path.with_name(out_path.stem + ".meta.json")
    partials = lambda: sorted(out_path.parent.glob(out_path.name + ".partial*"))  # noqa: E731
    n_proc, rank = dist.num_processes(), dist.rank()
    mine_path = out_path.with_name(out_path.name + (".partial" if n_proc == 1 else f".partial.{rank}"))
    ids = [s.id for s in samples]
    meta = dict(meta, ids=ids, max_new_tokens=int(max_new_tokens))
    if dist.key_processes() > 1:  # each process batches its own block: other batches than one process makes
        meta["processes"] = dist.key_processes()
    same = runs.read_json(meta_path) == meta
    if same and out_path.exists():
        recs = runs.read_jsonl(out_path)
        if [r["id"] for r in recs] == ids:
            return recs
    done: dict[str, dict] = {}
    if same:  # whatever any process finished before (one file per process that ran)
        for f in partials():
            done.update({r["id"]: r for r in runs.read_jsonl(f)})
    mine_before = {r["id"]: r for r in runs.read_jsonl(mine_path)} if same and mine_path.exists() else {}
    dist.wait()  # every process has read the old meta before the main one replaces it
    if dist.is_main():
        if not same:  # another model's (or settings') answers: gone before the new meta can vouch for them,
            out_path.unlink(missing_ok=True)  # so a crash from here on never leaves them looking like ours
            for f in partials():
                f.unlink(missing_ok=True)
        runs.write_json(meta_path, meta)
    todo = [s for s in samples if s.id not in done]
    mine = [todo[i] for i in dist.my_share(len(todo))]
    chunk = int(batch_size) * 4
    new: list[dict] = []
    with tqdm(total=len(samples), initial=len(samples) - len(todo), desc=desc, disable=not dist.is_main()) as bar:
        for i in range(0, len(mine), chunk):
            part = mine[i:i + chunk]
            its = items(part)
            outs = generate(model, processor, its, batch_size=int(batch_size), max_new_tokens=int(max_new_tokens),
                            progress=False)
            new += records(part, its, outs)
            runs.write_jsonl(mine_path, [*mine_before.values(), *new], every_rank=True)  # this process's own
            bar.update(len(part) * n_proc)
    for r in dist.gather_in_order(new):
        done[r["id"]] = r
    recs = [done[k] for k in ids]
    dist.wait()
    if dist.is_main():
        runs.write_jsonl(out_path, recs)
        for f in partials():
            f.unlink(missing_ok=True)
    dist.wait()
    return recs


def predict_bdd(model, processor, samples: Sequence, P: Mapping, out_path: str | os.PathLike,
                prompt: str = ANSWER_PROMPT, *, tag: str | None = None, desc: str = "predict") -> list[dict]:
    """Generate an answer per BDD-OIA sample, parse it, and write predictions.jsonl records
    (id, output, pred_actions, pred_reasons, gt_actions, gt_reasons, unparseable, image_paths).
    Reused and resumed as `generate_records` says; pass the checkpoint path as `tag`."""
    return generate_records(
        model, processor, samples, out_path, {"tag": tag, "prompt": prompt},
        items=lambda part: [(s.load_images(), prompt) for s in part],
        records=lambda part, _, outs: [_record(s, o) for s, o in zip(part, outs)],
        batch_size=int(P["eval"]["batch_size"]), max_new_tokens=int(P["eval"]["max_new_tokens"]), desc=desc)
