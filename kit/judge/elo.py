"""Ratings from pairwise battles, computed the way FastChat (Chatbot Arena, MT-bench) computes them.

A battle is a row of `runs/<run>/evaluate/battles.jsonl` (FastChat's format, kit.judge.battles):
`{"model_a", "model_b", "winner": "model_a" | "model_b" | "tie", "question_id", "task",
"verdicts": [verdict with model_a shown as A, verdict with model_b shown as A]}`.
FastChat's "tie (bothbad)" is read as a tie; any other winner is an error.

What follows FastChat (lm-sys/FastChat, checked at commit 0e6d3e4, 2025-04):

- `combine_orders`: `fastchat/llm_judge/common.py::play_a_match_pair` judges both orders (g1, g2)
  and `show_result.py::display_result_pairwise` counts a tie when g1 is a tie or g1 != g2; a
  judgment that errored is dropped there, and here it gives None (not judged; the caller counts it).
- `win_rates`: `show_result.py` (win_rate = W/(W+L+T), win_rate_adjusted = (W + T/2)/(W+L+T)) and
  `serve/monitor/elo_analysis.py::compute_pairwise_win_fraction` (both column orders pooled).
- `online_elo`: `elo_analysis.py::compute_elo` (older versions) / `rating_systems.py::compute_elo`:
  one pass in file order, E_a = 1/(1 + base^((R_b - R_a)/scale)), R_a += K (S_a - E_a),
  R_b += K (1 - S_a - E_b), a tie scores 0.5, K=4, scale=400, base=10, initial 1000.
- `bradley_terry`: `elo_analysis.py::compute_elo_mle_with_tie` (releases up to 2024-09): the win
  table counts a win twice and a tie once in each direction; an unpenalised logistic regression
  without intercept on rows +ln(base) for one model and -ln(base) for the other, weighted by that
  table; rating = scale * coef + initial. (FastChat's later `rating_systems.py::compute_bt` fits
  the same likelihood with scipy, a tie as half a win; the optimum is the same.)
- `bootstrap`: `elo_analysis.py::get_bootstrap_result(battles, compute_elo)` /
  `rating_systems.py::compute_bootstrap_elo`: resample the battles with replacement (in the
  resampled order), refit, and read the 2.5 / 50 / 97.5 percentiles (pandas' `quantile`, linear).

Where this deviates, and why:

- Bradley-Terry ratings are identifiable only up to a shift. FastChat relies on lbfgs starting at
  0 (which keeps the coefficients summing to 0, so the mean rating is `initial`) and then anchors
  mixtral-8x7b-instruct-v0.1 at 1114. Here the mean over the models is made exactly `initial`
  (per connected part of the comparison graph when models were never compared across parts); there
  is no anchor model.
- When the MLE does not exist (a model that never lost, or more generally the directed "beat or
  tied" graph is not strongly connected) FastChat's fit runs to max_iter and returns an arbitrary
  large rating with a ConvergenceWarning. Here one virtual tie is added to every compared pair in
  that case only (so the MLE exists and is finite: a 5-0 record gives 400*log10(11) points, not
  infinity); `bt_mle_exists(battles)` says whether that happened, and `elo_summary` records it.
- A battle of a model against itself carries no information: it is skipped (FastChat's pivot
  table skips the diagonal and its online update cancels out), the model still gets a rating.
- The bootstrap keeps floats (FastChat's leaderboard rounds medians to integers), uses a seeded
  numpy Generator, and a model absent from a resample is NaN in that round (left out of its
  percentiles, as pandas' quantile does for FastChat's DataFrame).
- Pairwise win-rate tables hold ties in the denominator (FastChat's `compute_pairwise_win_fraction`
  does too); `win_rate_matrix` shows the adjusted rate (ties count half), as MT-bench reports it.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}
VERDICTS = ("A", "B", "C")


# --------------------------------------------------------------------------- combining two orders

def combine_orders(verdict_ab: str | None, verdict_ba: str | None) -> str | None:
    """Winner of one battle judged in both orders.

    `verdict_ab` is the judge's 'A' | 'B' | 'C' (tie) with model_a shown as A, `verdict_ba` the
    same with model_b shown as A. Orders that agree give their winner ("model_a" | "model_b" |
    "tie" when both say 'C'); orders that disagree give "tie" (FastChat's rule: a tie in the first
    order, or any disagreement, is a tie). None when either verdict is None (the judgment failed
    after the retries): that battle was not judged, and the caller counts it as failed instead of
    as a tie.
    """
    for v in (verdict_ab, verdict_ba):
        if v is not None and v not in VERDICTS:
            raise ValueError(f"verdict {v!r}: expected 'A', 'B', 'C' or None")
    if verdict_ab is None or verdict_ba is None:
        return None
    first = {"A": "model_a", "B": "model_b", "C": "tie"}[verdict_ab]
    second = {"A": "model_b", "B": "model_a", "C": "tie"}[verdict_ba]
    return first if first == second else "tie"


# --------------------------------------------------------------------------- reading battles

def _score(winner: str) -> float:
    try:
        return WINNERS[winner]
    except KeyError:
        raise ValueError(f"winner {winner!r}: expected 'model_a', 'model_b' or 'tie'") from None


def _arrays(battles: Sequence[Mapping]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(models in order of first appearance, index of model_a, index of model_b, score of model_a)."""
    models: dict[str, int] = {}
    a = np.empty(len(battles), dtype=np.int64)
    b = np.empty(len(battles), dtype=np.int64)
    s = np.empty(len(battles), dtype=np.float64)
    for k, row in enumerate(battles):
        a[k] = models.setdefault(row["model_a"], len(models))
        b[k] = models.setdefault(row["model_b"], len(models))
        s[k] = _score(row["winner"])
    return list(models), a, b, s


# --------------------------------------------------------------------------- win rates

def _rates(w: int, l: int, t: int) -> dict:
    n = w + l + t
    return {"wins": w, "losses": l, "ties": t, "n": n,
            "win_rate": w / n if n else math.nan,
            "adjusted_win_rate": (w + 0.5 * t) / n if n else math.nan}


def win_rates(battles: Sequence[Mapping]) -> dict:
    """Wins, losses and ties, pooled from battles in either column order.

    Returns `{"pairs": {a: {b: counts}}, "models": {a: counts}}` where counts =
    `{"wins", "losses", "ties", "n", "win_rate": W/(W+L+T), "adjusted_win_rate": (W + T/2)/(W+L+T)}`
    from a's side; `pairs` holds both directions (pairs[b][a] mirrors pairs[a][b]), `models` is a
    against all others together (MT-bench's show_result), plus `"avg_pairwise_win_rate"`: the mean
    over a's opponents of the pairwise win_rate (Chatbot Arena's "average win rate").
    Battles of a model against itself are skipped.
    """
    cnt: dict[str, dict[str, list[int]]] = {}
    for row in battles:
        ma, mb, s = row["model_a"], row["model_b"], _score(row["winner"])
        cnt.setdefault(ma, {})
        cnt.setdefault(mb, {})
        if ma == mb:
            continue
        ab = cnt[ma].setdefault(mb, [0, 0, 0])
        ba = cnt[mb].setdefault(ma, [0, 0, 0])
        if s == 1.0:
            ab[0] += 1
            ba[1] += 1
        elif s == 0.0:
            ab[1] += 1
            ba[0] += 1
        else:
            ab[2] += 1
            ba[2] += 1
    pairs = {m: {o: _rates(*c) for o, c in sorted(opp.items())} for m, opp in sorted(cnt.items())}
    models = {}
    for m, opp in pairs.items():
        tot = [sum(c[k] for c in opp.values()) for k in ("wins", "losses", "ties")]
        models[m] = {**_rates(*tot), "opponents": len(opp),
                     "avg_pairwise_win_rate": (float(np.mean([c["win_rate"] for c in opp.values()]))
                                               if opp else math.nan)}
    return {"pairs": pairs, "models": models}


def win_rate_matrix(battles: Sequence[Mapping]):
    """pandas DataFrame: the row model's adjusted win rate (ties count half) against the column
    model; NaN on the diagonal and for pairs that never met. Rows and columns are ordered by each
    model's adjusted win rate against all others, best first."""
    import pandas as pd

    wr = win_rates(battles)
    order = sorted(wr["models"], key=lambda m: (-np.nan_to_num(wr["models"][m]["adjusted_win_rate"], nan=-1.0), m))
    mat = pd.DataFrame(np.nan, index=pd.Index(order, name="model"), columns=pd.Index(order, name="against"))
    for m, opp in wr["pairs"].items():
        for o, c in opp.items():
            mat.loc[m, o] = c["adjusted_win_rate"]
    return mat


# --------------------------------------------------------------------------- online Elo

def online_elo(battles: Sequence[Mapping], K: float = 4, scale: float = 400, base: float = 10,
               initial: float = 1000) -> dict[str, float]:
    """Elo updated battle by battle in the given (file) order: {model: rating}, in order of first
    appearance. A tie scores 0.5 for each side. Reordering the battles changes the result.

    Each battle moves the winner up by K (1 - E) and the loser down by as much, E being the winner's
    expected score 1 / (1 + 10^((R_loser - R_winner) / 400)); two new models expect 0.5 each:

    >>> online_elo([{"model_a": "sft", "model_b": "direct", "winner": "model_a"}])
    {'sft': 1002.0, 'direct': 998.0}
    """
    rating: dict[str, float] = {}
    for row in battles:
        ma, mb, sa = row["model_a"], row["model_b"], _score(row["winner"])
        ra = rating.setdefault(ma, float(initial))
        rb = rating.setdefault(mb, float(initial))
        if ma == mb:
            continue
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        rating[ma] = ra + K * (sa - ea)
        rating[mb] = rb + K * (1 - sa - eb)
    return rating


def _online_elo_rounds(a: np.ndarray, b: np.ndarray, s: np.ndarray, n_models: int, K: float,
                       scale: float, base: float, initial: float) -> np.ndarray:
    """Online Elo for many resamples at once: a, b, s are (rounds, n) arrays (each row one
    resample, in its order); returns (rounds, n_models) ratings. The same arithmetic as
    `online_elo`, one battle position at a time across all rounds (FastChat's fit_vectorized_elo)."""
    rounds, n = a.shape
    r = np.full((rounds, n_models), float(initial))
    rr = np.arange(rounds)
    same = a == b
    for t in range(n):
        ia, ib, sa = a[:, t], b[:, t], s[:, t]
        ra, rb = r[rr, ia], r[rr, ib]
        ea = 1 / (1 + base ** ((rb - ra) / scale))
        eb = 1 / (1 + base ** ((ra - rb) / scale))
        keep = ~same[:, t]
        r[rr[keep], ia[keep]] = (ra + K * (sa - ea))[keep]
        r[rr[keep], ib[keep]] = (rb + K * (1 - sa - eb))[keep]
    return r


# --------------------------------------------------------------------------- Bradley-Terry

def _bt_table(battles: Sequence[Mapping]) -> tuple[list[str], np.ndarray]:
    """(models sorted by name, FastChat's win table W): W[i, j] = 2 * (i beat j) + (ties of i and j)."""
    models, a, b, s = _arrays(battles)
    order = sorted(range(len(models)), key=lambda i: models[i])
    rank = np.empty(len(models), dtype=np.int64)
    rank[order] = np.arange(len(models))
    a, b = rank[a], rank[b]
    p = len(models)
    w = np.zeros((p, p))
    keep = a != b
    a, b, s = a[keep], b[keep], s[keep]
    np.add.at(w, (a, b), 2.0 * s)          # a win counts 2 for a, a tie 1
    np.add.at(w, (b, a), 2.0 * (1.0 - s))  # ... and for b
    return [models[i] for i in order], w


def _components(adj: np.ndarray, connection: str) -> tuple[int, np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    return connected_components(csr_matrix(adj), directed=True, connection=connection)


def _mle_exists(w: np.ndarray) -> bool:
    """The BT MLE is finite iff, within every part of the comparison graph, every model can reach
    every other along "beat or tied" edges (Zermelo / Ford): weak parts == strong parts."""
    if len(w) < 2:
        return True
    n_weak, _ = _components((w + w.T) > 0, "weak")
    n_strong, _ = _components(w > 0, "strong")
    return n_weak == n_strong


def bt_mle_exists(battles: Sequence[Mapping]) -> bool:
    """Whether `bradley_terry` is the plain MLE (True) or needed its virtual ties (False)."""
    return _mle_exists(_bt_table(battles)[1])


def _logistic_regression(**kw):
    """An unpenalised sklearn LogisticRegression in the installed version's spelling: `C=inf`
    from 1.8 on (where `penalty` is deprecated), `penalty=None` before."""
    import sklearn
    from sklearn.linear_model import LogisticRegression

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    if (major, minor) >= (1, 8):
        return LogisticRegression(C=np.inf, l1_ratio=0.0, **kw)
    return LogisticRegression(penalty=None, **kw)


def _fit_bt(w: np.ndarray, base: float) -> np.ndarray:
    """BT coefficients (log-base units), centred at 0 within each connected part, from the win table."""
    p = len(w)
    coef = np.zeros(p)
    if p < 2:
        return coef
    met = (w + w.T) > 0
    if not _mle_exists(w):
        w = w + met  # one virtual tie per compared pair: +1 each way in the doubled table
    i, j = np.nonzero(np.triu(met, 1))
    if len(i) == 0:
        return coef
    # FastChat's rows: for each pair, x = +ln(base) for i, -ln(base) for j, once with y=1 weighted
    # by W[i, j] and once with y=0 weighted by W[j, i] (it lists each pair in both orientations,
    # which doubles every weight and leaves the unpenalised optimum unchanged).
    x = np.zeros((2 * len(i), p))
    rows = np.arange(len(i))
    for off in (0, len(i)):
        x[rows + off, i] = math.log(base)
        x[rows + off, j] = -math.log(base)
    y = np.concatenate([np.ones(len(i)), np.zeros(len(i))])
    sw = np.concatenate([w[i, j], w[j, i]])
    lr = _logistic_regression(fit_intercept=False, tol=1e-10, max_iter=10_000)
    lr.fit(x, y, sample_weight=sw)
    coef = lr.coef_[0].copy()
    _, part = _components(met, "weak")
    for c in np.unique(part):
        coef[part == c] -= coef[part == c].mean()
    return coef


def bradley_terry(battles: Sequence[Mapping], scale: float = 400, base: float = 10,
                  initial: float = 1000) -> dict[str, float]:
    """Bradley-Terry ratings by maximum likelihood with ties (FastChat's compute_elo_mle_with_tie):
    {model: rating}, best first. The order of the battles does not matter.

    P(i beats j) = 1 / (1 + base^((R_j - R_i)/scale)); a tie counts as one win each way and a win
    as two. Ratings are centred: their mean is `initial` (within each part of the comparison graph
    if some models never met, directly or through others). A single model (or none) gets `initial`.
    A model that never lost (no finite MLE) gets a finite rating from one virtual tie per compared
    pair; see `bt_mle_exists`.
    """
    models, w = _bt_table(battles)
    coef = _fit_bt(w, base)
    ratings = {m: float(scale * c + initial) for m, c in zip(models, coef)}
    return dict(sorted(ratings.items(), key=lambda kv: (-kv[1], kv[0])))


# --------------------------------------------------------------------------- bootstrap

def _online_params(fn: Callable) -> dict | None:
    """The keyword arguments of online Elo when `fn` is `online_elo` (or a partial of it), else None."""
    if fn is online_elo:
        return {}
    if isinstance(fn, partial) and fn.func is online_elo and not fn.args:
        return dict(fn.keywords)
    return None


def bootstrap(battles: Sequence[Mapping], fn: Callable = online_elo, rounds: int = 1000,
              seed: int = 0) -> dict[str, dict[str, float]]:
    """{model: {"median", "lo", "hi"}}: the 50th, 2.5th and 97.5th percentiles of `fn` (battles ->
    {model: rating}) over `rounds` resamples of the battles with replacement, each in its sampled
    order. Seeded (numpy Generator): the same seed gives the same result. Models best (median) first.

    `fn=online_elo` (or a functools.partial of it with keyword arguments) runs all rounds at once
    in numpy; any other `fn` is called once per round. A model missing from a resample is left
    out of that round's percentiles.
    """
    battles = list(battles)
    n = len(battles)
    if n == 0 or rounds < 1:
        return {}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(rounds, n))
    models, a, b, s = _arrays(battles)
    params = _online_params(fn)
    if params is not None:
        kw = {"K": 4, "scale": 400, "base": 10, "initial": 1000, **params}
        r = _online_elo_rounds(a[idx], b[idx], s[idx], len(models), **kw)
        present = np.zeros((rounds, len(models)), dtype=bool)
        rr = np.arange(rounds)[:, None]
        present[rr, a[idx]] = True
        present[rr, b[idx]] = True
        r[~present] = np.nan
    else:
        col = {m: k for k, m in enumerate(models)}
        r = np.full((rounds, len(models)), np.nan)
        for k in range(rounds):
            for m, v in fn([battles[i] for i in idx[k]]).items():
                r[k, col[m]] = v
    out = {}
    for k, m in enumerate(models):
        v = r[:, k][~np.isnan(r[:, k])]
        if len(v) == 0:
            out[m] = {"median": math.nan, "lo": math.nan, "hi": math.nan}
            continue
        lo, med, hi = np.quantile(v, [0.025, 0.5, 0.975])
        out[m] = {"median": float(med), "lo": float(lo), "hi": float(hi)}
    return dict(sorted(out.items(), key=lambda kv: (-np.nan_to_num(kv[1]["median"], nan=-np.inf), kv[0])))


# --------------------------------------------------------------------------- position bias

def _verdict_pairs(items: Iterable) -> list[tuple[Any, Any]]:
    pairs = []
    for it in items:
        v = it["verdicts"] if isinstance(it, Mapping) else it
        if len(v) != 2:
            raise ValueError(f"verdicts {v!r}: expected [verdict with model_a first, verdict with model_b first]")
        for x in v:
            if x is not None and x not in VERDICTS:
                raise ValueError(f"verdict {x!r}: expected 'A', 'B', 'C' or None")
        pairs.append((v[0], v[1]))
    return pairs


def position_bias(items: Iterable) -> dict:
    """How the judge's verdicts depend on which answer it saw first.

    `items`: battles (their `"verdicts"` = [verdict with model_a shown as A, verdict with model_b
    shown as A], as kit.judge.battles writes them; pass the failed battles too to see their
    verdicts) or such (verdict_ab, verdict_ba) pairs directly. Verdicts are 'A', 'B', 'C' (tie) or
    None (failed).

    Per pair with both verdicts (`n_pairs`; `n_unjudged` pairs have a None), in MT-bench's terms
    (Zheng et al. 2023, position bias):
      consistent        both orders name the same model, or both say tie ('A','B'), ('B','A'), ('C','C')
      first_both        the first-shown answer wins in both orders ('A','A')
      second_both       the second-shown answer wins in both orders ('B','B')
      tie_one_order     one order says tie, the other names a model
      disagree          1 - consistent (= first_both + second_both + tie_one_order; these become ties)
    as fractions of n_pairs (counts under "counts"). Per single verdict (every non-None one,
    `n_verdicts`): `first`, `second`, `tie` = shares of 'A', 'B', 'C', and `first_of_decisive` =
    A / (A + B), 0.5 for a judge without position bias.
    """
    pairs = _verdict_pairs(items)
    judged = [(x, y) for x, y in pairs if x is not None and y is not None]
    c = {"consistent": 0, "first_both": 0, "second_both": 0, "tie_one_order": 0}
    for x, y in judged:
        if (x, y) in (("A", "B"), ("B", "A"), ("C", "C")):
            c["consistent"] += 1
        elif (x, y) == ("A", "A"):
            c["first_both"] += 1
        elif (x, y) == ("B", "B"):
            c["second_both"] += 1
        else:
            c["tie_one_order"] += 1
    n = len(judged)
    singles = [v for p in pairs for v in p if v is not None]
    na, nb, nc = (singles.count(v) for v in VERDICTS)
    frac = (lambda k: k / n) if n else (lambda k: math.nan)
    nv = len(singles)
    return {"n_pairs": n, "n_unjudged": len(pairs) - n,
            **{k: frac(v) for k, v in c.items()},
            "disagree": frac(n - c["consistent"]),
            "n_verdicts": nv,
            "first": na / nv if nv else math.nan,
            "second": nb / nv if nv else math.nan,
            "tie": nc / nv if nv else math.nan,
            "first_of_decisive": na / (na + nb) if na + nb else math.nan,
            "counts": {**c, "A": na, "B": nb, "C": nc}}


# --------------------------------------------------------------------------- summary

def elo_summary(battles: Sequence[Mapping], rounds: int = 1000, seed: int = 0) -> dict:
    """What metrics.json["evaluate"]["elo"] holds: `online` (online Elo in file order), `bt`
    (Bradley-Terry), `bootstrap` (online Elo over `rounds` resamples: median, lo, hi per model),
    `win_rates`, `position_bias` (of these battles' verdicts), `n_battles`, plus `bt_mle_exists`
    (False: the BT ratings needed virtual ties, see bradley_terry), `bootstrap_of` and `params`.
    K=4, scale=400, base=10, initial=1000 throughout, as in FastChat."""
    battles = list(battles)
    with_verdicts = [b for b in battles if "verdicts" in b]
    return {"online": online_elo(battles),
            "bt": bradley_terry(battles),
            "bootstrap": bootstrap(battles, online_elo, rounds=rounds, seed=seed),
            "win_rates": win_rates(battles),
            "position_bias": position_bias(with_verdicts),
            "n_battles": len(battles),
            "bt_mle_exists": bt_mle_exists(battles),
            "bootstrap_of": "online_elo",
            "params": {"K": 4, "scale": 400, "base": 10, "initial": 1000, "rounds": rounds, "seed": seed}}
