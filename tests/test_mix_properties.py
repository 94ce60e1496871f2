"""Property tests of hermes.mix.sample without replacement: the Stage-1 shares survive sampling.

Random hierarchies (L1 buckets of random sub-buckets of random sizes), every Stage-1 rule (uniform,
proportional, a temperature, a weights file) and every Stage-2 rule, document and token budgets.
Whenever every L1 bucket can supply its share n * w_b, the drawn L1 counts equal n * w_b up to the
rounding of the counts; otherwise only exhausted L1 buckets fall short, and a sub-bucket that runs out
passes its excess to its siblings first."""
import json
import os
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hermes import mix

LEVELS = (8, 8)
SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def hierarchies(draw):
    """codes [N, 2], quality [N], tokens [N]: 1-6 L1 buckets of 1-6 sub-buckets of 1-60 documents."""
    n_l1 = draw(st.integers(1, 6))
    l1s = draw(st.lists(st.integers(0, 7), min_size=n_l1, max_size=n_l1, unique=True))
    rows = []
    for b in l1s:
        subs = draw(st.lists(st.integers(0, 7), min_size=1, max_size=6, unique=True))
        for c in subs:
            rows += [(b, c)] * draw(st.integers(1, 60))
    codes = np.array(rows, np.int32)
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    codes = codes[rng.permutation(len(codes))]
    quality = rng.integers(0, 4, len(codes)).astype(np.float32)  # ties on purpose
    tokens = rng.integers(1, 50, len(codes))
    return codes, quality, tokens, seed


STAGE1 = st.one_of(st.sampled_from(["uniform", "proportional", "file"]), st.floats(0.25, 4.0))


def _stage1(rule, codes, seed, tmp):
    """The stage1 argument: a rule, or for "file" a .json or .csv weights file with random weights."""
    if rule != "file":
        return rule
    rng = np.random.default_rng(seed)
    l1 = np.unique(codes[:, 0])
    w = rng.random(l1.size) + 0.05
    if seed % 2:
        path = os.path.join(tmp, "w.json")
        with open(path, "w") as f:
            json.dump({str(int(b)): float(x) for b, x in zip(l1, w)}, f)
    else:
        path = os.path.join(tmp, "w.csv")
        with open(path, "w") as f:
            f.write("bucket,weight\n" + "".join(f"{int(b)},{float(x)!r}\n" for b, x in zip(l1, w)))
    return path


def _l1_view(plan):
    """Per L1 bucket (ascending): weight, eligible, target, drawn, exhausted."""
    _, first = np.unique(plan["l1"], return_index=True)
    return {k: np.asarray(plan[f"l1_{k}"])[first] for k in ("weight", "eligible", "target", "drawn", "exhausted")}


def _check_common(codes, idx, plan, prob):
    assert np.unique(idx).size == idx.size and (prob[idx] > 0).all()
    v = _l1_view(plan)
    assert np.isclose(v["weight"].sum(), 1.0)
    np.testing.assert_array_equal(v["drawn"], np.bincount(codes[idx, 0], minlength=8)[np.unique(codes[:, 0])])
    assert (v["drawn"] <= v["eligible"]).all() and (plan["drawn"] <= plan["eligible"]).all()
    np.testing.assert_array_equal(v["exhausted"], v["drawn"] == v["eligible"])
    return v


@SETTINGS
@given(h=hierarchies(), rule=STAGE1, stage2=st.sampled_from(mix.STAGE2_RULES), frac=st.floats(0, 1),
       p=st.floats(0.1, 1.0))
def test_document_budget_keeps_stage1_shares(h, rule, stage2, frac, p):
    codes, quality, _, seed = h
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = _stage1(rule, codes, seed, tmp)
        prob = mix.probabilities(codes, LEVELS, depth=2, stage1=stage1, stage2=stage2, quality=quality, p=p)
        pool = int((prob > 0).sum())
        n = int(round(frac * pool))
        idx, plan = mix.sample(codes, n, levels=LEVELS, depth=2, stage1=stage1, stage2=stage2, quality=quality,
                               p=p, seed=seed)
    assert idx.size == n
    v = _check_common(codes, idx, plan, prob)
    share = n * v["weight"]
    # every L1 count is its water-filled target rounded to an integer
    assert (np.abs(v["drawn"] - v["target"]) < 1 + 1e-9).all()
    # an L1 bucket falls short of its Stage-1 share only when it is exhausted
    short = v["drawn"] < np.floor(share + 1e-9)
    assert (v["exhausted"][short]).all()
    if (share <= v["eligible"] + 1e-9).all():  # every L1 bucket can supply its share
        assert (np.abs(v["drawn"] - share) < 1 + 1e-9).all()
        np.testing.assert_allclose(v["target"], share, atol=1e-6 * max(n, 1))
    # inside an L1 bucket: each sub-bucket within two documents of its target (L1 rounding + one);
    # "random" draws uniformly over the L1 bucket, so its sub-bucket counts are random
    if stage2 != "random":
        assert (np.abs(plan["drawn"] - plan["target"]) < 2 + 1e-9).all()
    # a sub-bucket below its share of its L1 bucket is saturated, or its L1 bucket got less than asked
    if stage2 == "coverage":
        for b in np.unique(plan["l1"]):
            m = plan["l1"] == b
            t = plan["target"][m]
            assert np.isclose(t.sum(), v["target"][np.searchsorted(np.unique(plan["l1"]), b)])
            unsat = t < plan["eligible"][m] - 1e-9
            if unsat.sum() > 1:  # unsaturated siblings share equally (coverage: equal masses)
                assert np.ptp(t[unsat]) < 1e-6 * max(n, 1)


# A case hypothesis found (token budget): take(n) and take(n - 1) differ by more than one document (the rounding
# moved one between sub-buckets), so the draw must be cut at the document that reaches the budget.
_CUT_CODES = np.array([
    0, 3, 0, 2, 0, 3, 0, 2, 0, 2, 0, 3, 0, 3, 0, 2, 0, 3, 0, 3, 0, 3, 0, 3, 0, 3, 0, 2, 0, 2, 0, 2, 0, 3, 0, 2, 0,
    2, 0, 2, 0, 4, 0, 3, 0, 2, 0, 2, 0, 2, 0, 4, 0, 3, 0, 3, 0, 3, 0, 4, 0, 3, 0, 3, 0, 2, 0, 2, 0, 3, 0, 2, 0, 3,
    0, 3, 0, 2, 0, 2, 0, 3, 0, 3, 0, 3, 0, 3, 0, 2, 0, 2, 0, 4, 0, 4, 0, 2, 0, 2, 0, 2, 0, 4, 0, 3, 0, 2, 0, 3, 0,
    0, 0, 2, 0, 3, 0, 2, 0, 3, 0, 2, 0, 2, 0, 3, 0, 4, 0, 2, 0, 2, 0, 2, 0, 1, 0, 2, 0, 2, 0, 3, 0, 3, 0, 4, 0, 2,
    0, 2, 0, 3, 0, 4, 0, 2, 0, 4, 0, 4, 0, 3, 0, 3, 0, 2, 0, 3, 0, 3, 0, 3, 0, 3, 0, 2, 0, 3, 0, 3, 0, 2, 0, 2, 0,
    3, 0, 3, 0, 3, 0, 3]).reshape(-1, 2)
_CUT_QUALITY = np.array([
    3, 0, 3, 2, 1, 2, 1, 3, 3, 1, 1, 0, 2, 2, 3, 3, 3, 3, 3, 0, 0, 1, 1, 3, 3, 1, 2, 2, 3, 0, 1, 2, 1, 3, 3, 3, 1,
    3, 0, 2, 1, 0, 2, 3, 3, 0, 3, 3, 1, 0, 3, 3, 1, 0, 0, 1, 3, 1, 0, 2, 2, 0, 2, 1, 2, 0, 2, 1, 2, 1, 2, 0, 1, 2,
    3, 1, 0, 2, 2, 2, 0, 1, 3, 3, 1, 2, 0, 3, 1, 1, 3, 2, 3, 0, 3, 3], dtype=np.float32)
_CUT_TOKENS = np.array([
    4, 12, 8, 13, 16, 4, 44, 13, 46, 38, 9, 35, 38, 7, 7, 19, 4, 21, 24, 33, 29, 23, 11, 29, 23, 42, 35, 36, 29, 18,
    14, 22, 29, 19, 8, 6, 3, 10, 20, 14, 9, 16, 36, 16, 46, 29, 7, 48, 44, 38, 8, 39, 35, 38, 35, 30, 17, 45, 49,
    34, 18, 25, 28, 4, 5, 24, 28, 11, 13, 7, 45, 25, 14, 39, 47, 15, 45, 38, 39, 26, 45, 8, 5, 48, 25, 20, 36, 15,
    32, 42, 40, 7, 48, 36, 35, 10])

@SETTINGS
@given(h=hierarchies(), rule=STAGE1, stage2=st.sampled_from(mix.STAGE2_RULES), frac=st.floats(0.01, 1),
       p=st.floats(0.1, 1.0))
@example(h=(_CUT_CODES, _CUT_QUALITY, _CUT_TOKENS, 1), rule="uniform", stage2="quality", frac=0.6875, p=0.5)
def test_token_budget_keeps_stage1_shares(h, rule, stage2, frac, p):
    codes, quality, tokens, seed = h
    with tempfile.TemporaryDirectory() as tmp:
        stage1 = _stage1(rule, codes, seed, tmp)
        prob = mix.probabilities(codes, LEVELS, depth=2, stage1=stage1, stage2=stage2, quality=quality, p=p)
        pool = float(tokens[prob > 0].sum())
        budget = float(max(1.0, np.floor(frac * pool)))
        idx, plan = mix.sample(codes, budget, levels=LEVELS, depth=2, stage1=stage1, stage2=stage2,
                               quality=quality, p=p, tokens=tokens, seed=seed)
    got = tokens[idx].sum()
    assert got >= budget and got - tokens[idx[-1]] < budget  # stops at the document that reaches it
    v = _check_common(codes, idx, plan, prob)
    n = idx.size
    share = n * v["weight"]
    # documents, not tokens, follow P: the L1 document counts keep the Stage-1 shares
    assert (np.abs(v["drawn"] - v["target"]) < 2 + 1e-9).all()
    if (share <= v["eligible"] + 1e-9).all():
        assert (np.abs(v["drawn"] - share) < 2 + 1e-9).all()
    short = v["drawn"] < np.floor(share + 1e-9) - 1
    assert (v["exhausted"][short]).all()


def test_issue_example_spills_within_l1_first():
    # L1 bucket 0: 1,190 docs in one sub-bucket + 10 in another; L1 bucket 1: 100 sub-buckets of 12 docs
    rows = [(0, 0, 0)] * 1190 + [(0, 1, 0)] * 10 + [(1, j, 0) for j in range(100) for _ in range(12)]
    codes = np.array(rows, np.int32)
    idx, plan = mix.sample(codes, 400, levels=(256, 256, 256), depth=2, stage1="uniform", stage2="coverage")
    np.testing.assert_array_equal(np.bincount(codes[idx, 0]), [200, 200])
    v = _l1_view(plan)
    np.testing.assert_array_equal(v["target"], [200, 200])
    assert not v["exhausted"].any()
    np.testing.assert_array_equal(plan["drawn"][:2], [190, 10])  # the small sibling is saturated


def test_exhausted_l1_spills_by_weight():
    # weights 1 : 1 : 3 ask 17 : 17 : 51 of 85; L1 0 has only 5, its excess 12 goes 1 : 3 to L1 1 and 2
    codes = np.array([(0, 0)] * 5 + [(1, 0)] * 500 + [(2, 0)] * 500, np.int32)
    idx, plan = mix.sample(codes, 85, levels=(4, 4), depth=2, stage1={0: 1, 1: 1, 2: 3})
    v = _l1_view(plan)
    np.testing.assert_array_equal(v["drawn"], [5, 20, 60])
    np.testing.assert_array_equal(v["exhausted"], [True, False, False])
    np.testing.assert_allclose(v["target"], [5, 20, 60])
