"""Track A synthesis (kit/synth): every step's backend on small inputs, the openai writer against a
local HTTP server (malformed JSON once, then valid; cached), a resume after a crash in the middle
of the pool, the CODA-LM layout it writes, and the quality measurements."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from kit.data import DataError, coda_lm, toyworld
from kit.data.scenes import sample_scene
from kit.data.render import render_scene
from kit.synth import pipeline, quality
from kit.synth.knowledge import DEFAULT_PATH, KnowledgeBase, load_documents
from kit.synth.naming import BACKGROUND, VisualTextDB, build_database, name_regions
from kit.synth.regions import ClassicalProposer, SamProposer, iou, make_proposer
from kit.synth.writer import OpenAIWriter, TemplateWriter, WriterAnswerError, place, validate

REGIONS = {"backend": "classical", "max_side": 128, "scale": 200, "sigma": 0.5, "min_size": 40, "min_area": 80,
           "max_area_frac": 0.25, "min_fill": 0.2, "sam_model": "vit_b", "sam_checkpoint": None,
           "sam_points_per_side": 4, "sam_pred_iou_thresh": 0.0, "sam_stability_score_thresh": 0.0, "detections": None}
NAMING = {"k": 3, "threshold": -1.0, "nms_iou": 0.3, "background_per_image": None, "crop_pad": 0.1, "batch_size": 64}


def scenes(n: int, seed: int = 3):
    out = []
    for i in range(n):
        g = sample_scene(seed, "coda:test", i, "uniform", 0.6)
        img, objs = render_scene(g, 192, 128)
        out.append((img, objs, g))
    return out


@pytest.fixture(scope="module")
def clip():
    from kit.models.clip import build_tiny_clip

    b = build_tiny_clip(seed=0)
    b.model.eval()
    return b


# --- step 1: regions -----------------------------------------------------------------------------

def test_classical_proposals_cover_the_drawn_objects():
    hits = total = 0
    for img, objs, _ in scenes(8):
        props = ClassicalProposer(REGIONS)(img)
        assert all(p["box"][2] > 0 and p["box"][3] > 0 and p["source"] == "classical" for p in props)
        assert all(p["box"][2] * p["box"][3] <= 0.25 * 192 * 128 for p in props)
        for o in objs:
            total += 1
            hits += max([iou(o["box"], p["box"]) for p in props] + [0]) >= 0.5
    assert total and hits / total >= 0.5, (hits, total)


def test_sam_backend_plumbing_with_random_weights():
    # random weights make meaningless masks; relaxed thresholds let some through: the plumbing only.
    # segment-anything's own SAM, its image encoder 2 blocks of width 64 instead of ViT-B's 12 of 768
    # (the same 1024-pixel input, prompt encoder and mask decoder): ViT-B took 90 s of a CPU here
    import importlib

    build = importlib.import_module("segment_anything.build_sam")
    torch.manual_seed(0)
    sam = build._build_sam(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=[1])
    img = scenes(1)[0][0]
    props = SamProposer({**REGIONS, "min_area": 1, "max_area_frac": 1.0, "min_fill": 0.0}, model=sam)(img)
    assert props and all(p["source"] == "sam" and len(p["box"]) == 4 and "predicted_iou" in p for p in props)


def test_sam_without_checkpoint_fails_fast_naming_the_param(tmp_path):
    with pytest.raises(FileNotFoundError, match="synth.regions.sam_checkpoint"):
        make_proposer({**REGIONS, "backend": "sam"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_proposer({**REGIONS, "backend": "sam", "sam_checkpoint": str(tmp_path / "sam_vit_h.pth")})
    with pytest.raises(ValueError, match="synth.regions.backend"):
        make_proposer({**REGIONS, "backend": "yolo"})


def test_detections_file_is_validated(tmp_path):
    from kit.synth.regions import load_detections

    p = tmp_path / "det.jsonl"
    p.write_text(json.dumps({"file_name": "a.jpg", "objects": [{"box": [1, 2, 3, 4], "name": "car"}]}) + "\n"
                 + json.dumps({"file_name": "b.jpg", "objects": [{"box": [1, 2, 0, 4], "name": "car"}]}) + "\n")
    with pytest.raises(DataError, match=r"det.jsonl:2: field 'objects\[0\].box'"):
        load_detections(p)


# --- step 2: naming by retrieval -----------------------------------------------------------------

def _samples(tmp_path, n=6):
    root = tmp_path / "coda"
    toyworld.generate_coda_lm(root, {"coda_splits": {"Train": n}}, progress=False)
    return coda_lm.load_split(root, "Train").samples


def test_database_and_naming_count_every_drop(tmp_path, clip):
    samples = _samples(tmp_path)
    db = build_database(clip, samples, ClassicalProposer(REGIONS), NAMING, progress=False)
    st = db.stats()
    assert st["by_kind"]["crop"] == sum(len(s.regions) for s in samples)
    assert st["by_kind"]["text"] == len({r["category_name"] for s in samples for r in s.regions})
    assert st["by_kind"]["background"] > 0
    img = samples[0].load_image()
    props = ClassicalProposer(REGIONS)(img)
    # a region's own crop is its nearest entry: a Train region is named by its own label
    own = [{"box": r["box"], "source": "classical"} for r in samples[0].regions]
    named, dropped = name_regions(db, clip, img, own, {**NAMING, "k": 1, "nms_iou": 1.0})
    assert [o["name"] for o in named] == [r["category_name"] for r in sorted(
        samples[0].regions, key=lambda r: -next(o["similarity"] for o in named if o["box"] == r["box"]))]
    # nothing clears an impossible threshold: every proposal is dropped as "no match", counted
    named, dropped = name_regions(db, clip, img, props, {**NAMING, "threshold": 1.01})
    assert named == [] and dropped == Counter(no_match=len(props))
    # a database of background only: every proposal votes background
    bg = VisualTextDB(db.embeddings[[i for i, k in enumerate(db.kinds) if k == "background"]],
                      [BACKGROUND] * db.kinds.count("background"), ["background"] * db.kinds.count("background"))
    named, dropped = name_regions(bg, clip, img, props, NAMING)
    assert named == [] and dropped == Counter(background=len(props))
    # the same box twice: the second is a counted duplicate; a detector's box keeps its name
    box = samples[0].regions[0]["box"]
    named, dropped = name_regions(db, clip, img, [{"box": box, "source": "classical"}] * 2
                                  + [{"box": [0, 0, 10, 10], "name": "tram", "score": 0.9, "source": "detector"}], NAMING)
    assert dropped["duplicate"] == 1 and "tram" in [o["name"] for o in named]
    db.save(tmp_path / "db")
    again = VisualTextDB.load(tmp_path / "db")
    assert again.labels == db.labels and np.allclose(again.embeddings, db.embeddings)


# --- step 3: knowledge retrieval -----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["tfidf", "bm25"])
def test_knowledge_retrieval_finds_each_category(backend):
    kb = KnowledgeBase(load_documents(DEFAULT_PATH), backend)
    for name in ("car", "traffic_cone", "dog", "traffic_light", "cyclist", "barrier", "debris", "traffic_sign"):
        doc, score = kb.search(name, 1)[0]
        assert doc["id"] == name and score > 0
    assert kb.search("zebra crossing gantry", 1)[0][1] == 0  # no shared word: scores 0 (below min_score)


def test_knowledge_base_errors_name_file_line_field(tmp_path):
    p = tmp_path / "kb.jsonl"
    p.write_text(json.dumps({"id": "a", "title": "A", "text": "x"}) + "\n" + json.dumps({"id": "b", "title": ""}) + "\n")
    with pytest.raises(DataError, match=r"kb.jsonl:2: field 'title'"):
        load_documents(p)
    with pytest.raises(ValueError, match="synth.knowledge.backend"):
        KnowledgeBase([{"id": "a", "title": "A", "text": "x"}], "dense")


# --- step 5: the writers -------------------------------------------------------------------------

def _inp(objects, caption="A road with 2 lanes on a clear day."):
    return {"file_name": "00001.jpg", "width": 192, "height": 128, "caption": caption, "objects": objects}


def test_template_writer_composes_from_its_inputs_only():
    kb = KnowledgeBase(load_documents(DEFAULT_PATH))
    objs = [{"id": "1", "name": "pedestrian", "box": [90, 70, 12, 30], "colour": "magenta"},
            {"id": "2", "name": "car", "box": [10, 70, 30, 20], "colour": "blue"},
            {"id": "3", "name": "traffic_light", "box": [88, 2, 18, 40], "colour": "red"}]
    for o in objs:
        o["description"] = kb.search(o["name"])[0][0]["text"]
    out = TemplateWriter().write(_inp(objs))
    assert set(out["region_perception"]) == {"1", "2", "3"}
    assert out["region_perception"]["1"].startswith("A magenta pedestrian is ahead in the ego lane.")
    assert "blue car is in the left lane" in out["region_perception"]["2"]
    assert out["region_perception"]["3"].startswith("A traffic light above the road shows red.")
    d = out["driving_suggestion"]
    assert d.startswith("Slow down and stop") and "not green" in d and "Do not move left" in d
    assert out["general_perception"].startswith("A road with 2 lanes")
    empty = TemplateWriter().write(_inp([]))
    assert empty["region_perception"] == {} and empty["driving_suggestion"].startswith("Keep moving forward")
    assert place([170, 60, 15, 20], 192, 128, "cone") == "in the right lane"


def test_validate_names_what_is_wrong():
    ok = {"caption": "c", "general_perception": "g", "region_perception": {"1": "r"}, "driving_suggestion": "d"}
    assert validate("```json\n" + json.dumps(ok) + "\n```", ["1"])["region_perception"] == {"1": "r"}
    with pytest.raises(WriterAnswerError, match="no JSON object"):
        validate("Sure! Here you go.", ["1"])
    with pytest.raises(WriterAnswerError, match="does not parse"):
        validate('{"caption": "c", }', ["1"])
    with pytest.raises(WriterAnswerError, match="exactly the object ids"):
        validate(json.dumps({**ok, "region_perception": {"2": "r"}}), ["1"])
    with pytest.raises(WriterAnswerError, match="'driving_suggestion'"):
        validate(json.dumps({**ok, "driving_suggestion": ""}), ["1"])


WRITER_CFG = {"backend": "openai", "model": "writer-llm", "prompts_dir": None, "temperature": 0.0, "max_tokens": None,
              "timeout": 5, "max_retries": 0, "reask": 2, "concurrency": 2}


def _chat(text):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "writer-llm",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def test_openai_writer_reasks_malformed_json_once_and_caches(httpserver, tmp_path, monkeypatch):
    from werkzeug import Response

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-writer-key")
    seen = []

    def handler(request):
        body = json.loads(request.data)
        seen.append(body)
        if len(body["messages"]) == 2:  # the first ask: malformed JSON
            return Response(json.dumps(_chat('{"caption": "a road", "general_perception": ')), content_type="application/json")
        assert "not usable" in body["messages"][-1]["content"]  # the re-ask says what was wrong
        good = {"caption": "A road with a car.", "general_perception": "A blue car is ahead.",
                "region_perception": {"1": "A blue car is ahead; keep your distance."}, "driving_suggestion": "Slow down."}
        return Response(json.dumps(_chat(json.dumps(good))), content_type="application/json")

    httpserver.expect_request("/v1/chat/completions", method="POST").respond_with_handler(handler)
    cfg = {**WRITER_CFG, "base_url": httpserver.url_for("/v1")}
    inp = _inp([{"id": "1", "name": "car", "box": [80, 70, 30, 20], "colour": "blue", "description": "A car."}])
    w = OpenAIWriter(cfg, tmp_path / "cache")
    out = w.write_many([inp])[0]
    assert out["region_perception"] == {"1": "A blue car is ahead; keep your distance."}
    assert w.stats == Counter(requests_sent=2, malformed=1, images=1)
    assert "sk-test-writer-key" not in json.dumps(w.describe()) and "writer-llm" in seen[0]["model"]
    assert "A car." in seen[0]["messages"][1]["content"]  # the retrieved description reaches the LLM
    # a rerun (a resumed pool) pays for nothing: both answers come from the cache
    w2 = OpenAIWriter(cfg, tmp_path / "cache")
    assert w2.write_many([inp])[0] == out and w2.stats["requests_sent"] == 0 and len(seen) == 2
    assert not any("sk-test-writer-key" in p.read_text() for p in (tmp_path / "cache").rglob("*.json"))


def test_openai_writer_gives_up_counted_and_needs_its_key(httpserver, tmp_path, monkeypatch):
    from werkzeug import Response

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    httpserver.expect_request("/v1/chat/completions").respond_with_handler(
        lambda r: Response(json.dumps(_chat("no json here")), content_type="application/json"))
    w = OpenAIWriter({**WRITER_CFG, "base_url": httpserver.url_for("/v1")}, tmp_path / "c")
    assert w.write_many([_inp([])]) == [None]
    assert w.stats["malformed"] == 3 and w.stats["failed"] == 1
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        OpenAIWriter({**WRITER_CFG, "base_url": httpserver.url_for("/v1")}, tmp_path / "c")
    with pytest.raises(ValueError, match="synth.writer.model"):
        OpenAIWriter({**WRITER_CFG, "model": None}, tmp_path / "c")


# --- the pipeline: resume, layout, quality -------------------------------------------------------

class CountingProposer(ClassicalProposer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def __call__(self, img):
        self.calls += 1
        return super().__call__(img)


class CrashingWriter(TemplateWriter):
    def __init__(self, crash_at: int):
        super().__init__()
        self.crash_at, self.seen = crash_at, 0

    def write_many(self, inputs, progress=True):
        self.seen += len(inputs)
        if self.seen >= self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        return super().write_many(inputs)


SYNTH = {"chunk_size": 2, "naming": {**NAMING, "threshold": 0.0}, "knowledge": {"min_score": 0.0},
         "caption": {"prompt": "Describe the driving scene.", "max_new_tokens": 8, "batch_size": 4}}


def test_resume_after_a_crash_redoes_only_missing_chunks(tmp_path, clip):
    root = tmp_path / "coda"
    toyworld.generate_coda_pool(root, {"coda_unlabeled": 7}, progress=False)
    pool = sorted((root / toyworld.POOL_DIR).glob("*.jpg"))
    samples = _samples(tmp_path)
    db = build_database(clip, samples, ClassicalProposer(REGIONS), NAMING, progress=False)
    kb = KnowledgeBase(load_documents(DEFAULT_PATH))
    prop = CountingProposer(REGIONS)
    steps = pipeline.Steps(proposer=prop, bundle=clip, db=db, kb=kb, captioner=None, writer=CrashingWriter(5), cfg=SYNTH)
    with pytest.raises(KeyboardInterrupt):
        pipeline.synthesize(steps, pool, tmp_path / "work")
    assert sorted(p.name for p in (tmp_path / "work").glob("chunk_*.jsonl")) == ["chunk_00000.jsonl", "chunk_00001.jsonl"]
    assert prop.calls == 6
    prop.calls = 0
    steps.writer = TemplateWriter()
    recs = pipeline.synthesize(steps, pool, tmp_path / "work")
    assert prop.calls == 3  # the crashed chunk (2 images) and the last one (1): nothing finished is redone
    assert [r["file_name"] for r in recs] == [p.name for p in pool]
    fresh = pipeline.synthesize(pipeline.Steps(proposer=ClassicalProposer(REGIONS), bundle=clip, db=db, kb=kb,
                                               captioner=None, writer=TemplateWriter(), cfg=SYNTH), pool, tmp_path / "w2")
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(fresh) == strip(recs)  # resumed = uninterrupted
    # the writer's counts are the dataset's: summed over its chunks, whoever wrote them, and a rerun
    # that reuses every chunk writes nothing and reports the same counts
    assert pipeline.writer_counts(tmp_path / "work") == pipeline.writer_counts(tmp_path / "w2") == {"images": 7}
    steps.writer = TemplateWriter()
    assert strip(pipeline.synthesize(steps, pool, tmp_path / "work")) == strip(recs)
    assert not steps.writer.stats["images"] and pipeline.writer_counts(tmp_path / "work") == {"images": 7}

    # the CODA-LM layout: the same loader reads it, every named region is a region QA item
    recs[3]["output"] = None  # an image the LLM never answered validly: left out, counted
    out = tmp_path / "synthetic"
    assert pipeline.write_split(recs, pool, out) == {"images": 6}
    split = coda_lm.load_split(out, "Train")
    assert len(split.samples) == 6
    assert sum(len(s.regions) for s in split.samples) == sum(len(r["objects"]) for r in recs if r["output"])
    from kit.data.coda_vqa import build_vqa

    items = build_vqa(out / "CODA-LM" / "Train", {t: "q" for t in ("general_perception", "region_perception",
                                                                    "driving_suggestion")}, images=True)
    assert len(items["general_perception"]) == 6 and all(it.image_path.is_file() for it in items["region_perception"])
    card = pipeline.dataset_card(recs, train_qa=10, describe={}, writer_stats={})
    assert card["images_written"] == 6 and card["images_without_answer"] == 1
    assert card["regions_proposed"] == card["regions_named"] + sum(card["regions_dropped"].values())
    assert card["qa_pairs"]["total"] == 12 + card["qa_pairs"]["region_perception"]

    # quality against the hidden pool: scene graphs the pipeline never read
    hidden = quality.hidden_pool(root)
    assert set(hidden) == {p.name for p in pool}
    scores = quality.named_object_scores(recs, hidden)
    tp = sum(c["tp"] for c in scores["per_class"].values())
    assert tp == scores["overall"]["tp"] and scores["overall"]["tp"] + scores["overall"]["fn"] == sum(
        len(h["objects"]) for h in hidden.values())


def test_named_object_scores_by_hand():
    hidden = {"a.jpg": {"objects": [{"box": [0, 0, 10, 10], "category_name": "car"},
                                    {"box": [50, 50, 10, 10], "category_name": "traffic_cone"},
                                    {"box": [80, 0, 10, 10], "category_name": "dog"}]}}
    recs = [{"file_name": "a.jpg", "objects": [{"box": [1, 1, 10, 10], "name": "truck"},      # right class: TP
                                               {"box": [50, 50, 10, 10], "name": "barrier"},  # wrong class: FP
                                               {"box": [120, 120, 5, 5], "name": "car"}]}]    # nothing there: FP
    s = quality.named_object_scores(recs, hidden)
    assert s["per_class"]["vehicle"] == {"precision": 0.5, "recall": 1.0, "tp": 1, "fp": 1, "fn": 0}
    assert s["per_class"]["barrier"]["fp"] == 1 and s["per_class"]["traffic_cone"]["fn"] == 1
    assert s["per_class"]["miscellaneous"]["recall"] == 0.0
    assert s["overall"] == {"precision": 1 / 3, "recall": 1 / 3, "tp": 1, "fp": 2, "fn": 2}
    assert s["exact_name_share"] == 0.0  # "truck" for a car: the class is right, the name is not

    # step by step: the proposals covered the car and the cone, not the dog; of the two covered, the car was
    # named right; the named regions are one right, one misnamed (the cone as a barrier), one background, and
    # (added) one loose box: a 3x10 strip of the dog (IoU 0.3)
    recs[0]["objects"].append({"box": [80, 0, 3, 10], "name": "animal"})
    recs[0]["proposal_boxes"] = [[1, 1, 10, 10], [50, 50, 10, 10], [120, 120, 5, 5], [200, 0, 4, 4], [80, 0, 3, 10]]
    st = quality.step_scores(recs, hidden)
    assert st["regions"]["proposals_per_image"] == 5 and st["regions"]["box_recall"] == 2 / 3
    assert st["regions"]["box_recall_per_class"] == {"vehicle": 1.0, "traffic_cone": 1.0, "miscellaneous": 0.0}
    assert st["naming_given_covered"]["recall"] == 0.5
    assert st["naming_given_covered"]["per_class"] == {"vehicle": 1.0, "traffic_cone": 0.0, "miscellaneous": None}
    named = st["named"]
    assert (named["right"], named["misnamed"], named["loose"], named["background"]) == (1, 1, 1, 1)
    s = quality.named_object_scores(recs, hidden)
    assert named["right_share"] == s["overall"]["precision"] == 0.25  # the same precision, split by cause


def test_paper_profile_fails_fast_naming_what_is_missing(tmp_path, monkeypatch):
    from kit.params import load_profile
    from kit.stages.synthesis import run_synthesis

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(DataError, match="params synth.pool_dir"):
        run_synthesis(load_profile("paper-iterative"), tmp_path / "run")
    pool = tmp_path / "pool"
    pool.mkdir()
    scenes(1)[0][0].save(pool / "a.jpg")
    cpu = {"device": "cpu", "precision": "fp32", "synth.pool_dir": str(pool)}  # no GPU here
    with pytest.raises(FileNotFoundError, match="synth.regions.sam_checkpoint: .*sam_vit_h_4b8939.pth does not exist"):
        run_synthesis(load_profile("paper-iterative", cpu), tmp_path / "run")
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        run_synthesis(load_profile("paper-iterative", {**cpu, "synth.regions.backend": "classical"}), tmp_path / "run")


def test_no_pool_says_what_to_set(tmp_path):
    """Real CODA-LM holds no unlabeled pool: with synth.pool_dir null, the error says to set it (the toy
    world's message would point at data.toy.coda_unlabeled, which a real root never reads)."""
    from kit.params import load_profile

    P = load_profile("tiny", {"data.coda_lm_root": str(tmp_path / "CODA-LM")})
    with pytest.raises(DataError, match="real CODA-LM, which has none: set synth.pool_dir"):
        pipeline.pool_images(P, tmp_path / "run")
    from kit import runs

    runs.record_metrics(tmp_path / "run", "prepare", {"datasets": {"coda_lm_root": str(tmp_path / "toy")}})
    with pytest.raises(DataError, match="the toy world has no pool: data.toy.coda_unlabeled"):
        pipeline.pool_images(load_profile("tiny", {"data.toy.coda_unlabeled": 0}), tmp_path / "run")
