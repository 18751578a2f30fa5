"""Batched generation (left padding), predictions.jsonl records with resume, and the figures."""
from pathlib import Path

import pytest

from kit import runs
from kit.labels import ACTION_TEXTS, ANSWER_PROMPT, N_ACTIONS, N_REASONS, REASONS, format_answer
from kit.models.device import model_spec


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight tiny Idefics3 VLM built locally (no download), loaded through load_vlm."""
    import torch

    from kit.models.tiny_vlm import build_tiny_vlm
    from kit.models.vlm import load_vlm, tiny_vlm_dir
    from kit.params import load_profile

    torch.set_num_threads(1)
    rd = tmp_path_factory.mktemp("run")
    texts = list(REASONS) + list(ACTION_TEXTS) + [ANSWER_PROMPT, "Describe the driving scene."] * 3
    texts += [format_answer([1, 0, 1, 0], [1] + [0] * 20), "a car on the road", "a red light ahead"] * 5
    build_tiny_vlm(tiny_vlm_dir(rd), texts, image_size=64)
    P = load_profile("tiny", {"eval.batch_size": 3, "eval.max_new_tokens": 6})
    model, processor = load_vlm(model_spec(P), rd)
    return P, rd, model, processor


def _samples(tmp: Path, n: int):
    from PIL import Image

    from kit.data.bdd_oia import BddSample

    out = []
    for i in range(n):
        p = tmp / f"img{i}.jpg"
        Image.new("RGB", (96, 54), (40 * i % 255, 120, 200 - 30 * i % 200)).save(p)
        a = [int(i % 2 == 0), int(i % 2 == 1), 0, int(i % 3 == 0)]
        r = [0] * N_REASONS
        r[i % N_REASONS] = 1
        out.append(BddSample(id=f"s{i}", file_name=p.name, image_path=p, frame_paths=[p], actions=a, reasons=r))
    return out


def test_batched_generation_equals_one_by_one(tiny, tmp_path):
    from kit.eval.generate import generate

    P, rd, model, processor = tiny
    imgs = [s.load_images() for s in _samples(tmp_path, 4)]
    # prompts of different lengths, so left padding is exercised
    items = [(imgs[0], "Stop?"), (imgs[1], ANSWER_PROMPT), (imgs[2], "Describe the driving scene."),
             (imgs[3], ANSWER_PROMPT + " " + ANSWER_PROMPT)]
    side = processor.tokenizer.padding_side
    batched = generate(model, processor, items, batch_size=4, max_new_tokens=6)
    single = [generate(model, processor, [it], batch_size=1, max_new_tokens=6)[0] for it in items]
    assert len(batched) == 4 and all(isinstance(s, str) for s in batched)
    assert batched == single
    assert processor.tokenizer.padding_side == side  # left padding only while generating
    with pytest.raises(ValueError, match="batch_size"):
        generate(model, processor, items, batch_size=0, max_new_tokens=2)


def test_predict_bdd_records_and_resume(tiny, tmp_path, monkeypatch):
    import kit.eval.generate as G

    P, rd, model, processor = tiny
    samples = _samples(tmp_path, 5)
    out = tmp_path / "pred" / "predictions.jsonl"
    recs = G.predict_bdd(model, processor, samples, P, out, tag="m1")
    assert [r["id"] for r in recs] == [s.id for s in samples]
    for r, s in zip(recs, samples):
        assert set(r) >= {"id", "output", "pred_actions", "pred_reasons", "gt_actions", "gt_reasons", "unparseable"}
        assert len(r["pred_actions"]) == N_ACTIONS and len(r["pred_reasons"]) == N_REASONS
        assert r["gt_actions"] == s.actions and r["gt_reasons"] == s.reasons
    assert runs.read_jsonl(out) == recs

    # same tag: answers are reused, nothing is generated
    def boom(*a, **k):
        raise AssertionError("generate must not run when predictions are complete")
    monkeypatch.setattr(G, "generate", boom)
    assert G.predict_bdd(model, processor, samples, P, out, tag="m1") == recs
    # a crash mid-way leaves a partial file that a rerun completes
    monkeypatch.undo()
    partial = out.with_name(out.name + ".partial")
    runs.write_jsonl(partial, recs[:2])
    out.unlink()
    calls = []
    real = G.generate
    monkeypatch.setattr(G, "generate", lambda m, p, items, **k: calls.append(len(items)) or real(m, p, items, **k))
    again = G.predict_bdd(model, processor, samples, P, out, tag="m1")
    assert calls == [3] and [r["id"] for r in again] == [s.id for s in samples]
    assert not partial.exists()
    # another tag (a retrained model): everything is regenerated
    calls.clear()
    m2 = G.predict_bdd(model, processor, samples, P, out, tag="m2")
    assert calls == [5]
    # a crash (kill -9) while another model answers: the rerun must not return the old model's file,
    # although the meta on disk is already the new model's
    runs.write_jsonl(out, [{**r, "output": "old model"} for r in m2])
    monkeypatch.setattr(G, "generate", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        G.predict_bdd(model, processor, samples, P, out, tag="m3")
    assert not out.exists()
    monkeypatch.setattr(G, "generate", lambda m, p, items, **k: calls.append(len(items)) or real(m, p, items, **k))
    calls.clear()
    m3 = G.predict_bdd(model, processor, samples, P, out, tag="m3")
    assert calls == [5] and all(r["output"] != "old model" for r in m3)


def test_figures_for_predictions(tmp_path):
    from PIL import Image

    from kit.eval.figures import figures_for_predictions, figures_from_run
    from kit.eval.metrics import track_b_metrics

    recs = []
    for i, s in enumerate(_samples(tmp_path, 8)):
        pa = s.actions if i % 3 else [0, 1, 0, 0]
        recs.append({"id": s.id, "output": format_answer(pa, s.reasons), "pred_actions": pa,
                     "pred_reasons": s.reasons, "gt_actions": s.actions, "gt_reasons": s.reasons,
                     "unparseable": False, "image_paths": [str(s.image_path)]})
    rd = tmp_path / "run"
    runs.write_jsonl(rd / "sft_baseline" / "predictions.jsonl", recs)
    runs.record_metrics(rd, "sft_baseline", {"eval": track_b_metrics(recs),
                                             "train_loss": [{"step": 1, "epoch": 0.5, "loss": 2.0},
                                                            {"step": 2, "epoch": 1.0, "loss": 1.0}]})
    paths = figures_for_predictions(rd / "sft_baseline" / "predictions.jsonl", tmp_path / "figs", "test")
    assert [p.name for p in paths] == ["label_distribution.png", "per_class_f1.png", "action_confusion.png",
                                       "reason_confusion.png", "examples.png"]
    for p in paths:
        w, h = Image.open(p).size
        assert w > 300 and h > 200
    # paper B's Tables 2-3 beside this run's, a row for every class
    from kit.eval.results import per_class_tables

    actions, reasons = per_class_tables(rd)
    assert len(actions) == 4 and len(reasons) == 21 and not actions.isna().any().any()
    assert actions.set_index("class").loc["stop", "paper B: F1 (%)"] == 89.24
    assert reasons.set_index("class").loc["Traffic light is not green", "paper B: test GT (%)"] == 51.61
    again = figures_from_run(rd)
    names = {p.name for p in again}
    assert {"per_class_f1.png", "train_loss.png", "comparison.png"} <= names
    assert all(p.parent == rd / "sft_baseline" / "figures" for p in again)
    with pytest.raises(FileNotFoundError, match="predictions"):
        figures_for_predictions(tmp_path / "nope.jsonl", tmp_path / "f", "x")


def test_train_loss_figure_marks_the_checkpoint_val_chose(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from kit.eval import figures

    loss = [{"step": s, "epoch": s / 10, "loss": 1 / s} for s in range(1, 31)]
    val = [{"step": 10, "value": 0.4}, {"step": 20, "value": 0.7}, {"step": 30, "value": 0.6}]
    drawn, save = {}, figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (drawn.setdefault("fig", fig), save(fig, path))[1])
    p = figures.plot_train_loss(loss, tmp_path / "loss.png", "Stage 2", val=val, val_label="val action mF1",
                                chosen_step=20)
    assert p.is_file()
    ax, bx = drawn["fig"].axes
    assert list(bx.lines[0].get_xdata()) == [10, 20, 30] and bx.get_ylabel() == "val action mF1"
    star = bx.collections[0].get_offsets()
    assert star.tolist() == [[20, 0.7]]  # the star sits on the chosen checkpoint's val score
    plt.close("all")


def test_report_has_the_posters_ground_truth_row(tmp_path):
    """Notebook 07's Track B table opens with the ground truth: mF1 1, and the reward CLIP's score of the
    true answers (Table 1's Image vs. Output for the model notebook 02 kept), beside the poster's 91.32%."""
    from kit.report import track_b_rows

    rd = tmp_path / "run"
    runs.record_metrics(rd, "sft_baseline", {"eval": {"action": {"macro_f1": 0.5}, "reason": {"macro_f1": 0.3}, "n": 2}})
    assert [r["method"] for r in track_b_rows(rd)] == ["SFT baseline"]  # no Table 1 yet: no ground-truth row
    runs.record_metrics(rd, "clip_finetune", {"target": "reason"})
    runs.write_json(rd / "clip_finetune" / "table1.json",
                    {"table": {"reason_ft": {"output": {"avg_sim": 0.8, "match_pct": 90.0, "n": 2}},
                               "action_ft": {"output": {"avg_sim": 0.1, "match_pct": 5.0, "n": 2}}}})
    gt = track_b_rows(rd)[0]
    assert gt["method"] == "Ground truth" and (gt["clip_score"], gt["clip_match"]) == (0.8, 0.9)
    assert gt["action_macro_f1"] == gt["reason_macro_f1"] == 1.0 and gt["paper_clip_score"] == 0.9132
