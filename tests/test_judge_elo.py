"""kit.judge.elo on hand-made battles whose results are known (FastChat's conventions)."""
import json
import math
import warnings
from functools import partial

import numpy as np
import pytest

from kit.judge.elo import (bootstrap, bradley_terry, bt_mle_exists, combine_orders, elo_summary, online_elo,
                           position_bias, win_rate_matrix, win_rates)


def B(a, b, winner, verdicts=None):
    row = {"model_a": a, "model_b": b, "winner": winner, "question_id": "q", "task": "t"}
    if verdicts is not None:
        row["verdicts"] = list(verdicts)
    return row


def expected(ra, rb):
    """Elo expectation of the first player, written out independently of the module."""
    return 1.0 / (1.0 + 10.0 ** ((rb - ra) / 400.0))


# --------------------------------------------------------------------------- combine_orders

@pytest.mark.parametrize("ab, ba, want", [
    ("A", "B", "model_a"),   # model_a preferred in both orders
    ("B", "A", "model_b"),   # model_b preferred in both orders
    ("C", "C", "tie"),
    ("A", "A", "tie"),       # first-shown answer wins both times: orders disagree
    ("B", "B", "tie"),       # second-shown answer wins both times
    ("A", "C", "tie"), ("C", "A", "tie"), ("B", "C", "tie"), ("C", "B", "tie"),
    (None, "A", None), ("A", None, None), (None, None, None), ("C", None, None),
])
def test_combine_orders_truth_table(ab, ba, want):
    assert combine_orders(ab, ba) == want


def test_combine_orders_rejects_other_verdicts():
    with pytest.raises(ValueError):
        combine_orders("D", "A")


# --------------------------------------------------------------------------- online Elo

def test_online_elo_one_win_is_plus_minus_two():
    r = online_elo([B("x", "y", "model_a")])
    assert r == {"x": 1002.0, "y": 998.0}
    r = online_elo([B("x", "y", "model_b")])
    assert r == {"x": 998.0, "y": 1002.0}


def test_online_elo_tie_between_equals_changes_nothing():
    assert online_elo([B("x", "y", "tie")]) == {"x": 1000.0, "y": 1000.0}


def test_online_elo_three_battles_by_hand():
    battles = [B("x", "y", "model_a"), B("y", "z", "model_a"), B("x", "z", "tie")]
    x = y = z = 1000.0
    # 1: x beats y from 1000/1000
    e = expected(x, y)
    x, y = x + 4 * (1 - e), y + 4 * (0 - (1 - e))
    assert (x, y) == (1002.0, 998.0)
    # 2: y (998) beats z (1000)
    e = expected(y, z)
    y, z = y + 4 * (1 - e), z - 4 * (1 - e)
    # 3: x (1002) ties z (~997.99)
    e = expected(x, z)
    x, z = x + 4 * (0.5 - e), z + 4 * (0.5 - (1 - e))
    got = online_elo(battles)
    assert got == pytest.approx({"x": x, "y": y, "z": z}, abs=1e-9)
    # literal values derived by hand: battle 2 moves 4 * (1 - 1/(1 + 10**(2/400))) = 2.011513 points
    # from z to y; battle 3 (x 1002 vs z 997.988487) moves 4 * (0.5 - 1/(1 + 10**(-4.011513/400)))
    # = -0.023091 points to x, i.e. 0.023091 from x to z
    assert got["x"] == pytest.approx(1001.976909, abs=1e-5)
    assert got["y"] == pytest.approx(1000.011513, abs=1e-5)
    assert got["z"] == pytest.approx(998.011578, abs=1e-5)
    assert sum(got.values()) == pytest.approx(3000.0, abs=1e-9)  # Elo is zero-sum


def test_online_elo_parameters():
    assert online_elo([B("x", "y", "model_a")], K=32, initial=1500) == {"x": 1516.0, "y": 1484.0}


def test_online_elo_depends_on_order_bt_does_not():
    battles = [B("x", "y", "model_a")] * 5 + [B("x", "y", "model_b")] * 3 + [B("y", "z", "tie"), B("x", "z", "model_b")]
    fwd, rev = online_elo(battles), online_elo(battles[::-1])
    assert abs(fwd["x"] - rev["x"]) > 0.1
    assert bradley_terry(battles) == pytest.approx(bradley_terry(battles[::-1]), abs=1e-6)


def test_online_elo_self_battle_skipped_and_bad_winner_raises():
    assert online_elo([B("x", "x", "model_a")]) == {"x": 1000.0}
    with pytest.raises(ValueError):
        online_elo([B("x", "y", "draw")])


# --------------------------------------------------------------------------- Bradley-Terry

def test_bt_three_to_one_gives_400_log10_3_centred_at_1000():
    battles = [B("x", "y", "model_a")] * 2 + [B("y", "x", "model_b")] + [B("y", "x", "model_a")]  # x 3 : 1 y
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn deprecation / convergence warnings
        r = bradley_terry(battles)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), rel=1e-3)
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-4)  # it is the MLE, not near it
    assert (r["x"] + r["y"]) / 2 == pytest.approx(1000.0, abs=1e-9)
    assert list(r) == ["x", "y"]  # best first


def test_bt_tie_counts_one_win_each_way_wins_twice():
    # 1 win + 1 tie: FastChat's table gives x 2+1 = 3, y 0+1 = 1, so the same 400*log10(3)
    r = bradley_terry([B("x", "y", "model_a"), B("x", "y", "tie")])
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), rel=1e-4)
    assert bt_mle_exists([B("x", "y", "model_a"), B("x", "y", "tie")])


def test_bt_symmetric_ties_give_equal_ratings():
    r = bradley_terry([B("x", "y", "tie")] * 4)
    assert r == pytest.approx({"x": 1000.0, "y": 1000.0}, abs=1e-6)
    r = bradley_terry([B("x", "y", "model_a"), B("x", "y", "model_b"), B("y", "x", "tie")] * 2)
    assert r["x"] == pytest.approx(r["y"], abs=1e-6)


def test_bt_three_models_ordered_mean_1000_and_scale():
    battles = ([B("a", "b", "model_a")] * 6 + [B("a", "b", "model_b")] * 2
               + [B("b", "c", "model_a")] * 6 + [B("c", "b", "model_a")] * 2
               + [B("a", "c", "model_a")] * 9 + [B("a", "c", "model_b")])
    r = bradley_terry(battles)
    assert list(r) == ["a", "b", "c"] and r["a"] > r["b"] > r["c"]
    assert np.mean(list(r.values())) == pytest.approx(1000.0, abs=1e-9)
    r2 = bradley_terry(battles, scale=800, initial=1500)
    assert r2["a"] - r2["c"] == pytest.approx(2 * (r["a"] - r["c"]), rel=1e-5)
    assert np.mean(list(r2.values())) == pytest.approx(1500.0, abs=1e-9)


def test_bt_model_that_never_lost_is_finite_without_warnings():
    battles = [B("x", "y", "model_a")] * 5
    assert not bt_mle_exists(battles)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = bradley_terry(battles)
    # one virtual tie: x 10 + 1 = 11, y 0 + 1 = 1
    assert r["x"] - r["y"] == pytest.approx(400 * math.log10(11), rel=1e-4)
    # an unbeaten model among three is still first and finite
    r = bradley_terry(battles + [B("y", "z", "model_a"), B("z", "y", "model_a"), B("x", "z", "model_a")])
    assert list(r)[0] == "x" and all(math.isfinite(v) for v in r.values())


def test_bt_single_model_empty_and_disconnected():
    assert bradley_terry([]) == {}
    assert bradley_terry([B("x", "x", "tie")]) == {"x": 1000.0}
    r = bradley_terry([B("a", "b", "model_a")] * 3 + [B("a", "b", "model_b")]
                      + [B("c", "d", "model_a")] * 3 + [B("c", "d", "model_b")])
    assert (r["a"] + r["b"]) / 2 == pytest.approx(1000.0, abs=1e-6)
    assert (r["c"] + r["d"]) / 2 == pytest.approx(1000.0, abs=1e-6)
    assert r["a"] - r["b"] == pytest.approx(400 * math.log10(3), rel=1e-4)


# --------------------------------------------------------------------------- bootstrap

def _dominant_battles(n=300, seed=0):
    """'top' wins every battle; 'mid' and 'low' split theirs 60:40."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        pair = rng.integers(3)
        if pair == 0:
            out.append(B("top", "mid", "model_a") if k % 2 else B("mid", "top", "model_b"))
        elif pair == 1:
            out.append(B("low", "top", "model_b"))
        else:
            out.append(B("mid", "low", "model_a" if rng.random() < 0.6 else "model_b"))
    return out


def test_bootstrap_seeded_ordered_and_separates_an_unbeaten_model():
    battles = _dominant_battles()
    r1 = bootstrap(battles, rounds=200, seed=3)
    assert r1 == bootstrap(battles, rounds=200, seed=3)
    assert r1 != bootstrap(battles, rounds=200, seed=4)
    for m, v in r1.items():
        assert set(v) == {"median", "lo", "hi"}
        assert v["lo"] <= v["median"] <= v["hi"]
        assert v["lo"] < v["hi"]
    assert r1["top"]["lo"] > max(r1["mid"]["hi"], r1["low"]["hi"])
    assert list(r1)[0] == "top"


def test_bootstrap_vectorised_online_equals_the_generic_loop():
    battles = _dominant_battles(120)
    fast = bootstrap(battles, online_elo, rounds=40, seed=1)
    slow = bootstrap(battles, lambda b: online_elo(b), rounds=40, seed=1)
    assert fast.keys() == slow.keys()
    for m in fast:
        assert fast[m] == pytest.approx(slow[m], abs=1e-9)
    fast_k = bootstrap(battles, partial(online_elo, K=16), rounds=40, seed=1)
    slow_k = bootstrap(battles, lambda b: online_elo(b, K=16), rounds=40, seed=1)
    assert fast_k["top"] == pytest.approx(slow_k["top"], abs=1e-9)
    assert fast_k["top"]["median"] > fast["top"]["median"]


def test_bootstrap_of_bt_and_percentiles():
    battles = _dominant_battles(150)
    r = bootstrap(battles, bradley_terry, rounds=30, seed=0)
    assert r["top"]["lo"] > r["mid"]["hi"]
    # the percentiles are those of the per-round ratings (linear, like pandas' quantile)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(battles), size=(30, len(battles)))
    vals = [bradley_terry([battles[i] for i in row])["mid"] for row in idx]
    assert r["mid"]["median"] == pytest.approx(float(np.median(vals)), abs=1e-9)
    assert r["mid"]["lo"] == pytest.approx(float(np.percentile(vals, 2.5)), abs=1e-9)


def test_bootstrap_of_2000_battles_rates_every_model():
    rng = np.random.default_rng(0)
    models = ["m0", "m1", "m2", "m3", "m4", "m5"]
    battles = []
    for _ in range(2000):
        i, j = rng.choice(6, 2, replace=False)
        battles.append(B(models[i], models[j], ["model_a", "model_b", "tie"][rng.integers(3)]))
    r = bootstrap(battles, rounds=1000, seed=0)
    assert sorted(r) == models
    # outcomes drawn at random: every model's interval is ordered and holds the starting rating
    assert all(v["lo"] <= v["median"] <= v["hi"] and v["lo"] < 1000 < v["hi"] for v in r.values())


# --------------------------------------------------------------------------- win rates

def test_win_rates_counts_pooled_from_both_column_orders():
    battles = ([B("x", "y", "model_a")] * 3 + [B("y", "x", "model_b")] * 2   # x wins 5
               + [B("y", "x", "model_a")] * 2                                 # x loses 2
               + [B("x", "y", "tie"), B("y", "x", "tie"), B("y", "x", "tie")]  # 3 ties
               + [B("x", "z", "model_b"), B("z", "x", "tie")])
    wr = win_rates(battles)
    xy = wr["pairs"]["x"]["y"]
    assert (xy["wins"], xy["losses"], xy["ties"], xy["n"]) == (5, 2, 3, 10)
    assert xy["win_rate"] == 0.5
    assert xy["adjusted_win_rate"] == pytest.approx(6.5 / 10)
    yx = wr["pairs"]["y"]["x"]
    assert (yx["wins"], yx["losses"], yx["ties"]) == (2, 5, 3)
    assert yx["adjusted_win_rate"] == pytest.approx(3.5 / 10)
    x = wr["models"]["x"]
    assert (x["wins"], x["losses"], x["ties"], x["n"], x["opponents"]) == (5, 3, 4, 12, 2)
    assert x["win_rate"] == pytest.approx(5 / 12)
    assert x["adjusted_win_rate"] == pytest.approx(7 / 12)
    assert x["avg_pairwise_win_rate"] == pytest.approx((0.5 + 0.0) / 2)
    assert wr["models"]["z"]["adjusted_win_rate"] == pytest.approx(1.5 / 2)
    json.dumps(wr)


def test_win_rate_matrix():
    battles = [B("x", "y", "model_a")] * 3 + [B("y", "x", "tie")] + [B("y", "z", "model_a")]
    m = win_rate_matrix(battles)
    assert list(m.index) == list(m.columns) == ["x", "y", "z"]
    assert m.loc["x", "y"] == pytest.approx(3.5 / 4)
    assert m.loc["y", "x"] == pytest.approx(0.5 / 4)
    assert m.loc["y", "z"] == 1.0 and m.loc["z", "y"] == 0.0
    assert np.isnan(m.loc["x", "z"]) and all(np.isnan(m.loc[k, k]) for k in m.index)


# --------------------------------------------------------------------------- position bias

def test_position_bias_on_hand_made_verdicts():
    pairs = [("A", "B"), ("B", "A"), ("C", "C"),   # 3 consistent
             ("A", "A"), ("A", "A"),               # 2 favour the first-shown answer
             ("B", "B"),                           # 1 favours the second
             ("A", "C"),                           # 1 tie in one order
             (None, "A")]                          # not judged
    pb = position_bias(pairs)
    assert pb["n_pairs"] == 7 and pb["n_unjudged"] == 1
    assert pb["consistent"] == pytest.approx(3 / 7)
    assert pb["disagree"] == pytest.approx(4 / 7)
    assert pb["first_both"] == pytest.approx(2 / 7)
    assert pb["second_both"] == pytest.approx(1 / 7)
    assert pb["tie_one_order"] == pytest.approx(1 / 7)
    # single verdicts, pair by pair: A 1+1+0+2+2+0+1+1 = 8, B 1+1+0+0+0+2+0+0 = 4, C 2+1 = 3; 15 non-None
    assert pb["counts"]["A"] == 8 and pb["counts"]["B"] == 4 and pb["counts"]["C"] == 3
    assert pb["n_verdicts"] == 15
    assert pb["first"] == pytest.approx(8 / 15)
    assert pb["second"] == pytest.approx(4 / 15) and pb["tie"] == pytest.approx(3 / 15)
    assert pb["first_of_decisive"] == pytest.approx(8 / 12)
    # the same from battles' "verdicts"
    battles = [B("x", "y", combine_orders(*p) or "tie", verdicts=p) for p in pairs]
    assert position_bias(battles) == pb


def test_position_bias_unbiased_judge_and_empty():
    pb = position_bias([("A", "B"), ("B", "A")])
    assert pb["consistent"] == 1.0 and pb["disagree"] == 0.0 and pb["first_of_decisive"] == 0.5
    empty = position_bias([])
    assert empty["n_pairs"] == 0 and math.isnan(empty["consistent"])


# --------------------------------------------------------------------------- summary

def test_elo_summary_shape():
    battles = [B("x", "y", combine_orders(ab, ba), verdicts=(ab, ba))
               for ab, ba in [("A", "B")] * 6 + [("B", "A")] * 2 + [("A", "A")] * 2]
    s = elo_summary(battles, rounds=50, seed=0)
    assert {"online", "bt", "bootstrap", "win_rates", "position_bias", "n_battles"} <= set(s)
    assert s["n_battles"] == 10
    assert s["online"] == online_elo(battles) and s["bt"] == bradley_terry(battles)
    assert s["bootstrap"] == bootstrap(battles, online_elo, rounds=50, seed=0)
    assert s["position_bias"]["first_both"] == pytest.approx(0.2)
    assert s["bt_mle_exists"] is True
    json.dumps(s)
    empty = elo_summary([], rounds=10)
    assert empty["online"] == {} and empty["bt"] == {} and empty["bootstrap"] == {} and empty["n_battles"] == 0
