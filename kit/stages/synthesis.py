"""Notebook 01, Track A: paper A's retrieval-augmented synthetic data (kit/synth), written as a
CODA-LM split under `<run>/synthesis/data/` with a dataset card, and measured against the toy
world's hidden scene graphs where they exist.

    run_synthesis(P, run_dir)                     -> metrics["synthesis"]
    run_synthesis(P, run_dir, captioner=ckpt, stage="spin/round_1/synthesis")   # SPIN rounds regenerate

The stage key covers the `synth` settings and the identities of what the pipeline reads: the pool's
images, CODA-LM Train (the naming database), the naming CLIP, the captioner and the knowledge base.
Work is kept per key (`work/<key>/chunk_*.jsonl`), so a rerun after a crash resumes the same key and
a changed setting or model starts afresh; LLM answers are cached across keys by their request.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping

from kit import dist, runs
from kit.data import coda_lm, coda_lm_root
from kit.judge.factory import make_judge
from kit.keys import artifact_id, keyed_dir, mark, marked_key, stage_key
from kit.models.clip import load_clip, tiny_clip_dir
from kit.models.device import model_spec
from kit.models.vlm import load_vlm, resolve_vlm_path
from kit.params import params_hash
from kit.synth import pipeline, quality
from kit.synth.figures import figures_from_run
from kit.synth.knowledge import DEFAULT_PATH, KnowledgeBase
from kit.synth.naming import VisualTextDB, build_database
from kit.synth.pipeline import Steps
from kit.synth.regions import load_detections, make_proposer
from kit.synth.writer import make_writer

STAGE = "synthesis"


def clip_id(P: Mapping, run_dir) -> str:
    clip = P["models"]["clip"]
    if (clip.get("name") or "tiny") == "tiny":
        return artifact_id(tiny_clip_dir(run_dir))
    pre = clip.get("pretrained")
    return f"open_clip:{clip['name']}:" + (artifact_id(pre) if pre and Path(str(pre)).expanduser().exists() else str(pre))


def captioner_source(P: Mapping, run_dir, captioner=None) -> str:
    """The VLM that captions: `captioner` (a checkpoint, e.g. a SPIN round's), else `synth.caption.model`,
    else the profile's VLM."""
    given = captioner or P["synth"]["caption"].get("model")
    if given and Path(str(given)).expanduser().exists():
        return resolve_vlm_path(model_spec(P), run_dir, given)
    return str(given) if given else resolve_vlm_path(model_spec(P), run_dir)


def load_captioner(P: Mapping, run_dir, source: str):
    if Path(source).exists():
        return load_vlm(model_spec(P), run_dir, source)
    # a hub id: load it as the profile's VLM would be loaded
    return load_vlm(model_spec({**P, "models": {**P["models"], "vlm": {**P["models"]["vlm"], "name": source}}}), run_dir)


def train_samples(P: Mapping, run_dir):
    return coda_lm.load_split(coda_lm_root(P["data"], run_dir), P["coda"]["train_split"],
                              max_samples=P["coda"].get("train_samples")).samples


def train_qa_pairs(samples) -> int:
    return sum(2 + len(s.regions) for s in samples)


def _pool_id(pool) -> str:
    return params_hash([(p.name, artifact_id(p)) for p in pool])


def _settings(P: Mapping) -> dict:
    s = {k: v for k, v in P["synth"].items() if k not in ("show", "chunk_size")}
    s["writer"] = {k: v for k, v in s["writer"].items() if k not in ("concurrency", "cache_dir", "timeout", "max_retries")}
    return s


def database(P: Mapping, run_dir, bundle, proposer, samples, clip: str):
    """The naming database, built once per (CLIP, Train, settings) and kept under synthesis/database/<key>/."""
    cfg = P["synth"]
    key = stage_key({"naming": cfg["naming"], "regions": cfg["regions"], "seed": int(P["seed"])},
                    {"clip": clip, "train": params_hash([(s.id, artifact_id(s.json_path), artifact_id(s.image_path))
                                                         for s in samples])})
    folder = runs.stage_dir(run_dir, STAGE) / "database" / key

    def load_or_build():  # the main process alone, the others get its database (numpy embeddings)
        db = VisualTextDB.load(folder)
        if db is None:
            db = build_database(bundle, samples, proposer, cfg["naming"], seed=int(P["seed"]))
            db.save(folder)
        return db

    return dist.on_main(load_or_build), key


def build_steps(P: Mapping, run_dir, captioner=None, *, writer_cache=None):
    """Every step's backend, in the order that fails fastest: what needs a file, an endpoint or a
    key (SAM checkpoint, detections, knowledge base, the LLM writer) is checked before any model runs."""
    cfg, spec = P["synth"], model_spec(P)
    proposer = make_proposer(cfg["regions"], str(spec.device))
    detections = load_detections(cfg["regions"]["detections"]) if cfg["regions"].get("detections") else {}
    kb = KnowledgeBase.from_params(cfg["knowledge"])
    writer = make_writer(cfg["writer"], writer_cache or cfg["writer"].get("cache_dir")
                         or runs.stage_dir(run_dir, STAGE) / "llm_cache")
    bundle = load_clip(spec, run_dir)
    samples = train_samples(P, run_dir)
    clip = clip_id(P, run_dir)
    db, db_key = database(P, run_dir, bundle, proposer, samples, clip)
    source = captioner_source(P, run_dir, captioner)
    model, processor = load_captioner(P, run_dir, source)
    steps = Steps(proposer=proposer, bundle=bundle, db=db, kb=kb, captioner=(model, processor), writer=writer,
                  cfg=cfg, detections=detections)
    upstream = {"clip": clip, "database": db_key, "captioner": artifact_id(source),
                "knowledge": artifact_id(cfg["knowledge"].get("path") or DEFAULT_PATH)}
    if cfg["regions"].get("detections"):
        upstream["detections"] = artifact_id(cfg["regions"]["detections"])
    return steps, samples, upstream


def run_synthesis(P: Mapping, run_dir, *, captioner=None, stage: str = STAGE, built=None) -> dict:
    """The pool through every step into `<run>/<stage>/data` (a CODA-LM root whose Train split is the
    synthetic set), its card, its quality on the toy world, and figures. `built`: build_steps' result,
    when the caller (notebook 01) has built the steps already."""
    t0 = time.time()
    sd = runs.stage_dir(run_dir, stage)
    pool = pipeline.pool_images(P, run_dir)
    steps, samples, upstream = built or build_steps(P, run_dir, captioner,
                                                    writer_cache=runs.stage_dir(run_dir, STAGE) / "llm_cache")
    key = stage_key(_settings(P), {**upstream, "pool": _pool_id(pool)})
    work = keyed_dir(sd / "work", key)
    records = pipeline.synthesize(steps, pool, work, desc=f"{stage}: {len(pool)} images")
    out_root = sd / "data"

    def write():  # the main process decides whether the split is there (see spin._write_marked)
        if marked_key(out_root) != key:
            pipeline.write_split(records, pool, out_root)
            mark(out_root, key, stage=stage)

    dist.on_main(write)
    describe = {"backends": {"regions": steps.proposer.name, "naming": "clip-retrieval",
                             "knowledge": steps.kb.backend, "caption": upstream["captioner"],
                             "writer": steps.writer.describe()},
                "pool": str(pool[0].parent), "key": key}
    card = pipeline.dataset_card(records, train_qa=train_qa_pairs(samples), describe=describe,
                                 writer_stats=pipeline.writer_counts(work))
    runs.write_json(sd / "card.json", card)
    runs.atomic_write_text(sd / "card.md", pipeline.card_markdown(card))
    runs.write_jsonl(sd / "records.jsonl", records)
    entry = {"card": card, "data_root": str(out_root), "key": key}
    hidden = quality.hidden_pool(coda_lm_root(P["data"], run_dir))
    if hidden is not None:
        judge = make_judge(P["judge"], run_dir)
        entry["quality"] = {"named_objects": quality.named_object_scores(records, hidden),
                            "steps": quality.step_scores(records, hidden),
                            "answers": quality.answer_quality(records, hidden, judge, P["coda"]["questions"])}
        runs.write_json(sd / "quality.json", entry["quality"])

    entry["figures"] = [str(p) for p in dist.on_main(figures_from_run, run_dir, stage)]
    entry["seconds"] = round(time.time() - t0, 2)
    runs.record_metrics(run_dir, stage, entry)
    return entry


