"""Track B metrics against hand-computed cases and against the official per-sample loop."""
import numpy as np
import pytest
from sklearn.metrics import f1_score

from kit.eval.metrics import label_metrics, majority_labels, track_b_metrics
from kit.labels import ACTIONS, N_ACTIONS, N_REASONS, REASONS, format_answer

NAMES = ["a", "b", "c"]
T = [[1, 0, 0], [0, 0, 0], [1, 1, 0]]
P = [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


def test_hand_computed_case():
    m = label_metrics(T, P, NAMES)
    assert m["accuracy"] == pytest.approx(7 / 9)
    assert m["per_class_f1"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 0.0})
    assert m["macro_f1"] == pytest.approx(5 / 9)
    # row 0: 1; row 1 (no true, no predicted label): 0 (zero_division=0); row 2: 2*1/(2*1+1+1) = 0.5
    assert m["f1_all"] == pytest.approx(0.5)
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["support"] == {"a": 2, "b": 1, "c": 0}
    assert m["predicted"] == {"a": 1, "b": 1, "c": 1}
    assert m["n_classes_present"] == 2
    assert m["macro_f1_present"] == pytest.approx(5 / 6)
    assert m["per_class_precision"]["a"] == pytest.approx(1.0)
    assert m["per_class_recall"]["a"] == pytest.approx(0.5)
    assert m["n"] == 3


def test_absent_class_counts_as_zero_in_macro_f1():
    # class c is absent from the "test split" and never predicted: F1 0, kept in the official mF1
    t = [[1, 0, 0], [0, 1, 0]]
    m = label_metrics(t, t, NAMES)
    assert m["per_class_f1"]["c"] == 0.0
    assert m["macro_f1"] == pytest.approx(2 / 3)
    assert m["macro_f1_present"] == pytest.approx(1.0)
    assert m["n_classes_present"] == 2
    assert m["accuracy"] == 1.0 and m["exact_match"] == 1.0 and m["f1_all"] == 1.0


def test_all_zero_rows_and_predictions():
    t = [[0, 0, 0], [0, 0, 0]]
    m = label_metrics(t, t, NAMES)
    assert m["accuracy"] == 1.0 and m["exact_match"] == 1.0
    assert m["f1_all"] == 0.0 and m["macro_f1"] == 0.0  # official zero_division behaviour
    m2 = label_metrics([[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]], NAMES)
    assert m2["accuracy"] == pytest.approx(3 / 6)
    assert m2["macro_f1"] == 0.0 and m2["f1_all"] == 0.0 and m2["exact_match"] == 0.0


def test_matches_official_per_sample_loop_and_sklearn_defaults():
    rng = np.random.default_rng(0)
    t = (rng.random((60, N_REASONS)) < 0.15).astype(int)
    p = (rng.random((60, N_REASONS)) < 0.15).astype(int)
    t[:5] = 0  # all-zero rows
    p[:3] = 0
    m = label_metrics(t, p, REASONS)
    with np.errstate(all="ignore"), pytest.warns(Warning):
        official_loop = np.mean([f1_score(t[j:j + 1], p[j:j + 1], average="samples") for j in range(len(t))])
        official_per = f1_score(t, p, average=None)
    assert m["f1_all"] == pytest.approx(official_loop)
    assert m["macro_f1"] == pytest.approx(official_per.mean())
    assert m["accuracy"] == pytest.approx((t == p).mean())


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="shape"):
        label_metrics([[1, 0]], [[1, 0, 0]], NAMES)
    with pytest.raises(ValueError, match="0/1"):
        label_metrics([[2, 0, 0]], [[1, 0, 0]], NAMES)


def _rec(i, ga, gr, pa, pr, output=None, **kw):
    return {"id": str(i), "output": output if output is not None else format_answer(pa, pr),
            "pred_actions": pa, "pred_reasons": pr, "gt_actions": ga, "gt_reasons": gr, **kw}


def test_track_b_metrics_and_unparseable_count():
    z_a, z_r = [0] * N_ACTIONS, [0] * N_REASONS
    stop = [0, 1, 0, 0]
    red = [0] * N_REASONS
    red[3] = 1
    recs = [
        _rec(0, stop, red, stop, red),                                # perfect
        _rec(1, stop, red, z_a, z_r, output="a blue sky"),            # unparseable (re-parsed)
        _rec(2, [1, 0, 0, 0], z_r, stop, red, unparseable=False),
        _rec(3, stop, red, z_a, z_r, output="", unparseable=True),
    ]
    m = track_b_metrics(recs)
    assert m["n"] == 4 and m["unparseable"] == 2
    assert m["exact_match"] == pytest.approx(1 / 4)
    assert set(m["action"]["per_class_f1"]) == set(ACTIONS)
    assert set(m["reason"]["per_class_f1"]) == set(REASONS)
    # stop: TP 1 (rec 0), FP 1 (rec 2), FN 2 (recs 1, 3) -> 2/(2+1+2)
    assert m["action"]["per_class_f1"]["stop"] == pytest.approx(2 / 5)
    assert m["action"]["support"]["stop"] == 3
    with pytest.raises(ValueError, match="gt_reasons"):
        track_b_metrics([{"id": "x", "pred_actions": stop, "pred_reasons": red, "gt_actions": stop}])


def test_majority_labels():
    assert majority_labels([[1, 0, 1], [1, 0, 0], [0, 0, 1]]) == [1, 0, 1]
    assert majority_labels([[1, 0], [0, 1]]) == [0, 0]  # a tie is not a majority
