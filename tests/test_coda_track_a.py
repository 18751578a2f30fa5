"""Track A evaluation pieces: CODA-LM as VQA, submission files, task scores, the rubric judge,
the stage key, and `kit judge score`."""
import json
import shutil
from pathlib import Path

import pytest

from kit.data import coda_vqa
from kit.data import DataError
from kit.judge import score as S
from kit.judge.base import Judge
from kit.judge.factory import make_judge
from kit.judge.request import JudgeRequest
from kit.judge.parse import parse_rating, parse_verdict

FIX = Path(__file__).parent / "fixtures" / "coda_lm"
Q = {t: f"question of {t}" for t in coda_vqa.TASKS}


@pytest.fixture
def coda(tmp_path):
    root = tmp_path / "coda_lm"
    shutil.copytree(FIX, root)
    return root


def test_vqa_in_the_converters_order(coda):
    items = coda_vqa.build_vqa(coda / "CODA-LM" / "Train", Q, images=True)
    gp, rp, ds = items["general_perception"], items["region_perception"], items["driving_suggestion"]
    assert [it.question_id for it in gp] == [0, 1] and [it.image for it in gp] == ["val/images/0001.jpg", "val/images/0002.jpg"]
    assert gp[0].answer == "A road with a car and cones." and ds[0].answer == "Slow down."
    # regions: files sorted, then keys in order; ids count on across images
    assert [(it.question_id, it.image) for it in rp[:2]] == [(0, "val/images_w_boxes/0001_object_1.jpg"),
                                                            (1, "val/images_w_boxes/0001_object_2.jpg")]
    assert rp[0].category_name == "car" and rp[0].answer == "Object 1."
    assert all(it.question == Q[it.task] for t in items.values() for it in t)


def test_region_image_has_the_red_box(coda):
    from PIL import Image

    it = coda_vqa.build_vqa(coda / "CODA-LM" / "Train", Q, images=True)["region_perception"][0]
    assert it.image_path == coda / it.image and it.image_path.is_file()
    with Image.open(it.image_path) as im, Image.open(coda / "val/images/0001.jpg") as orig:
        boxed, plain = im.convert("RGB"), orig.convert("RGB")
        assert boxed.size == plain.size
        r, g, b = boxed.getpixel((12, 3))       # top edge of box [2, 3, 20, 10]
        assert r > 150 and g < 100 and b < 100
        assert boxed.getpixel((12, 8)) == pytest.approx(plain.getpixel((12, 8)), abs=40)  # inside: untouched


def test_official_questions_replace_the_kits(coda, tmp_path):
    items = coda_vqa.build_vqa(coda / "CODA-LM" / "Train", Q)
    anno = tmp_path / "vqa_anno"
    anno.mkdir()
    for t, its in items.items():
        (anno / f"{t}.jsonl").write_text("".join(json.dumps({"question_id": i.question_id, "image": i.image,
                                                             "question": f"official {t}"}) + "\n" for i in its))
    new = coda_vqa.official_questions(items, anno)
    assert {i.question for i in new["region_perception"]} == {"official region_perception"}
    (anno / "general_perception.jsonl").write_text(json.dumps({"question_id": 0, "image": "x.jpg", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"general_perception.jsonl: question_id 0: expected image 'val/images/0001.jpg'"):
        coda_vqa.official_questions(items, anno)


def test_submission_round_trip_and_errors(coda, tmp_path):
    items = coda_vqa.build_vqa(coda / "CODA-LM" / "Train", Q)
    for t, its in items.items():
        coda_vqa.write_answers(tmp_path, t, its, [f"answer {i}" for i in range(len(its))])
    rows = coda_vqa.read_answers(tmp_path)
    assert list(rows["general_perception"][1]) == list(coda_vqa.SUBMISSION_FIELDS)
    assert rows["region_perception"][2]["answer"] == "answer 2"
    (tmp_path / "driving_suggestion_answer.jsonl").write_text('{"question_id": 0, "image": "a", "question": "q"}\n')
    with pytest.raises(DataError, match=r"driving_suggestion_answer.jsonl:1: missing field\(s\) \['answer'\]"):
        coda_vqa.read_answers(tmp_path)
    with pytest.raises(DataError, match=r"missing question_id \[1\]"):
        S.pair_up("general_perception", items["general_perception"], rows["general_perception"][:1], "f.jsonl")


def test_rating_parse_follows_the_official_patterns():
    assert parse_rating("fine. Rating: [[7]]") == 7
    assert parse_rating("my rating is: [[3]] overall") == 3
    assert parse_rating("[[10]]") == 10
    assert parse_rating("Rating: [[7.5]]") is None and parse_rating("Rating: 7") is None
    assert parse_rating("Rating: [[0]]") is None and parse_rating("[[11]]") is None
    assert parse_verdict("so [[B]]") == "B" and parse_verdict("[[C]]") == "C" and parse_verdict("A wins") is None


class Scripted(Judge):
    """A judge answering from a script keyed by prediction text (stands in for a server's answers)."""
    backend, model, cacheable = "scripted", "script", False

    def __init__(self, answers):
        super().__init__(reask=1)
        self.answers = answers

    def _ask(self, messages, request):
        return self.answers[request.prediction], {}


def _official_mean(outputs):
    """CODA-LM's stage1/2/3 aggregation: the plain mean of the ratings that parse (others dropped)."""
    got = []
    for o in outputs:
        for m in ("Rating: [[", "rating is: [[", "[["):
            try:
                got.append(int(o.split(m)[1].split("]]")[0]))
                break
            except (IndexError, ValueError):
                continue
    return sum(got) / len(got)


def test_scores_equal_the_official_aggregation_and_count_what_failed(coda, tmp_path):
    items = coda_vqa.build_vqa(coda / "CODA-LM" / "Train", Q)
    script = {}
    for t, its in items.items():
        answers = [f"{t} answer {i}" for i in range(len(its))]
        coda_vqa.write_answers(tmp_path, t, its, answers)
        for i, a in enumerate(answers):
            script[a] = f"ok. Rating: [[{3 + i}]]"
    script["region_perception answer 1"] = "no number here"       # fails after the re-ask
    summary, judged = S.judge_submission(Scripted(script), items, tmp_path)
    for t in ("general_perception", "driving_suggestion"):
        outs = [script[f"{t} answer {i}"] for i in range(len(items[t]))]
        assert summary[t]["score"] == pytest.approx(_official_mean(outs))
        assert summary[t]["score_100"] == pytest.approx(10 * summary[t]["score"]) and summary[t]["coverage"] == 1
    rp = summary["region_perception"]
    assert rp["n"] == 3 and rp["judged"] == 2 and rp["coverage"] == pytest.approx(2 / 3) and rp["failed"] == [1]
    assert rp["score"] == pytest.approx(_official_mean([script[f"region_perception answer {i}"] for i in range(3)]))
    assert rp["per_class"]["vehicle"]["score"] == 3 and rp["per_class"]["traffic_cone"]["judged"] == 0
    assert rp["per_class"]["miscellaneous"]["score"] == 5  # the dog of val_0002
    assert summary["overall_100"] == pytest.approx(sum(summary[t]["score_100"] for t in coda_vqa.TASKS) / 3)
    assert judged["region_perception"][1]["error"].startswith("unparsable")


def test_unmapped_category_names_are_counted_not_scored():
    recs = {"general_perception": [{"question_id": 0, "rating": 5}], "driving_suggestion": [{"question_id": 0, "rating": 5}],
            "region_perception": [{"question_id": 0, "rating": 9, "category_name": "car"},
                                  {"question_id": 1, "rating": 1, "category_name": "Overturned Car"}]}
    s = S.summarize(recs)["region_perception"]
    assert s["score"] == 9 and s["n"] == 1 and s["unscored"] == 1 and s["unscored_names"] == ["Overturned Car"]


def test_rubric_rates_correct_answers_higher():
    from kit.judge.rubric import RubricJudge

    ref = ("A blue car is close ahead in the same lane. A traffic light above the road shows red. A pedestrian is "
           "in the ego lane. Slow down and stop, because the traffic light is not green.")
    preds = [ref, "A blue car is close ahead in the same lane. A traffic light shows red. Stop.",
             "A blue car is close ahead. Keep moving forward.", "The road is clear. A dog and a truck. Turn left."]
    res = RubricJudge().judge([JudgeRequest("rate", "general_perception", ref, prediction=p) for p in preds], progress=False)
    ratings = [r.verdict for r in res]
    assert ratings[0] == 10 and ratings == sorted(ratings, reverse=True) and ratings[-1] <= 3
    assert all("Rating: [[" in r.text for r in res)
    pair = RubricJudge().judge([JudgeRequest("pair", "general_perception", ref, answer_a=preds[3], answer_b=preds[0])],
                               progress=False)[0]
    assert pair.verdict == "B" and pair.text.endswith("[[B]]")


def test_rubric_follows_perturbations_of_toy_references(tmp_path):
    from kit.data import toyworld
    from kit.judge.rubric import RubricJudge
    from kit.judge.validity import flip_advice, perturbation_study

    toyworld.generate_coda_lm(tmp_path, {"seed": 3, "coda_splits": {"Test": 12}}, progress=False)
    v = perturbation_study(tmp_path / "CODA-LM" / "Test", RubricJudge(), seed=0)
    assert v["n"] > 40 and v["spearman"] > 0.6
    assert v["mean_rating"]["intact"] > v["mean_rating"]["drop 2"]
    assert v["mean_rating"]["intact advice"] > v["mean_rating"]["flipped advice"]
    assert flip_advice("Slow down and stop, because x. Turn left.") == "Keep moving forward, because x. Turn right."


def test_user_prompt_files_replace_the_kits(tmp_path):
    from kit.judge.prompts import load_prompts, messages_for

    (tmp_path / "region_perception.system.txt").write_text("MY OWN REGION JUDGE")
    P = load_prompts(tmp_path)
    msgs = messages_for(JudgeRequest("rate", "region_perception", "ref {x}", prediction="pred"), P)
    assert msgs[0]["content"] == "MY OWN REGION JUDGE" and "ref {x}" in msgs[-1]["content"] and len(msgs) == 2
    gp = messages_for(JudgeRequest("rate", "general_perception", "r", prediction="p"), P)
    assert len(gp) == 6  # system, two few-shot pairs, the item (the kit's files where the user has none)
    (tmp_path / "general_perception.few_shot.json").write_text('[{"reference": "r"}]')
    with pytest.raises(ValueError, match=r"general_perception.few_shot.json: expected a list of"):
        load_prompts(tmp_path)
    with pytest.raises(FileNotFoundError, match="judge.prompts_dir"):
        load_prompts(tmp_path / "nope")


def test_stage_key_follows_settings_and_upstream_content(tmp_path):
    from kit.keys import artifact_id, mark, stage_key

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"abc")
    k1 = stage_key({"lr": 1e-3}, {"model": artifact_id(model)})
    assert k1 == stage_key({"lr": 1e-3}, {"model": artifact_id(model)})
    assert k1 != stage_key({"lr": 2e-3}, {"model": artifact_id(model)})
    (model / "weights.bin").write_bytes(b"abd")                      # retrained upstream, same path
    assert k1 != stage_key({"lr": 1e-3}, {"model": artifact_id(model)})
    mark(model, "k-upstream")
    assert artifact_id(model) == "key:k-upstream"
    assert artifact_id("HuggingFaceTB/SmolVLM-256M-Instruct") == "id:HuggingFaceTB/SmolVLM-256M-Instruct"


def test_kit_judge_score_cli(coda, tmp_path, capsys):
    from kit.cli import main

    items = coda_vqa.build_vqa(coda / "CODA-LM" / "Val", Q)
    for t, its in items.items():
        coda_vqa.write_answers(tmp_path / "pred", t, its, [it.answer for it in its])   # the references themselves
    assert main(["judge", "score", str(tmp_path / "pred"), "--reference", str(coda / "CODA-LM" / "Val")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"general_perception", "region_perception", "driving_suggestion", "overall_100"}
    assert out["general_perception"]["score"] == 10 and out["overall_100"] == 100
    assert set(out["region_perception"]["per_class"]) == set(__import__("kit.data.coda_lm", fromlist=["x"]).CLASSES)
    assert main(["judge", "score", str(tmp_path / "missing"), "--reference", str(coda / "CODA-LM" / "Val")]) == 1


def test_make_judge_rejects_unknown_backend():
    with pytest.raises(ValueError, match="judge.backend"):
        make_judge({"backend": "gpt"})
