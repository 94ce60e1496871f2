"""hermes.mix: exact mixture probabilities against a brute-force loop, and seeded statistical
checks of sampling with and without replacement."""
import json
import warnings

import numpy as np
import pytest

from hermes import buckets as hb
from hermes import mix

LEVELS = (3, 3, 2)


def make(n, levels=LEVELS, seed=0, skew=True):
    rng = np.random.default_rng(seed)
    cols = []
    for k in levels:  # skewed so buckets differ in size
        p = np.arange(1, k + 1, dtype=float) ** (2 if skew else 0)
        cols.append(rng.choice(k, n, p=p / p.sum()))
    codes = np.stack(cols, 1).astype(np.int32).reshape(n, len(levels))
    quality = rng.integers(0, 5, n).astype(np.float32)  # ties on purpose
    return codes, quality


def brute_weights(codes, stage1):
    l1, sizes = np.unique(codes[:, 0], return_counts=True)
    if stage1 == "uniform":
        w = np.ones(l1.size)
    elif stage1 == "proportional":
        w = sizes.astype(float)
    else:
        w = sizes ** (1 / stage1)
    return dict(zip(l1.tolist(), (w / w.sum()).tolist()))


def brute_probabilities(codes, depth, w, stage2, quality, p):
    n = len(codes)
    pre = [tuple(r[:depth]) for r in codes.tolist()]
    out = np.zeros(n)
    for i in range(n):
        b1 = codes[i, 0]
        in_b1 = [j for j in range(n) if codes[j, 0] == b1]
        in_b = [j for j in range(n) if pre[j] == pre[i]]
        if stage2 == "coverage":
            out[i] = w[b1] / len({pre[j] for j in in_b1}) / len(in_b)
        elif stage2 == "random":
            out[i] = w[b1] / len(in_b1)
        else:
            thr = np.quantile(quality[in_b].astype(np.float64), 1 - p)
            elig = [j for j in in_b if quality[j] >= thr]
            out[i] = w[b1] * len(in_b) / len(in_b1) / len(elig) if quality[i] >= thr else 0.0
    return out


@pytest.mark.parametrize("stage2", mix.STAGE2_RULES)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("stage1", ["uniform", "proportional", 0.5])
def test_probabilities_match_brute_force(stage2, depth, stage1):
    codes, q = make(40)
    got = mix.probabilities(codes, LEVELS, depth=depth, stage1=stage1, stage2=stage2,
                            quality=q, p=0.3)
    ref = brute_probabilities(codes, depth, brute_weights(codes, stage1), stage2, q, 0.3)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=0)
    assert got.dtype == np.float64 and got.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 257])
@pytest.mark.parametrize("levels", [(5,), (4, 7), (3, 5, 2), (2, 3, 4, 3)])
@pytest.mark.parametrize("stage2", mix.STAGE2_RULES)
def test_probabilities_sum_to_one(n, levels, stage2):
    codes, q = make(n, levels, seed=n)
    for depth in range(1, len(levels) + 1):
        pr = mix.probabilities(codes, levels, depth=depth, stage2=stage2, quality=q, stage1=2.0)
        assert pr.shape == (n,) and (pr >= 0).all()
        assert pr.sum() == pytest.approx(1.0 if n else 0.0, abs=1e-12)


def test_quality_keeps_top_p_and_max():
    codes, q = make(257, seed=1)
    q = np.random.default_rng(1).random(257)
    for p in (0.05, 0.3, 1.0):
        pr = mix.probabilities(codes, LEVELS, depth=3, stage2="quality", quality=q, p=p)
        sub = hb.bucket_ids(codes, 3, LEVELS)
        for b in np.unique(sub):
            m = sub == b
            assert np.array_equal(pr[m] > 0, q[m] >= min(np.quantile(q[m], 1 - p), q[m].max()))
            assert pr[m][np.argmax(q[m])] > 0  # the best document is always eligible
        if p == 1.0:
            assert (pr > 0).all()


def test_stage1_rules():
    codes, _ = make(257)
    ids, w = mix.stage1_weights(codes, LEVELS, "uniform")
    _, sizes = np.unique(codes[:, 0], return_counts=True)
    np.testing.assert_array_equal(ids, np.unique(codes[:, 0]))
    np.testing.assert_allclose(w, 1 / ids.size)
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, "proportional")[1], sizes / 257)
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, 1.0)[1], sizes / 257)
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, float("inf"))[1], 1 / ids.size)
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, 0.5)[1], sizes**2 / (sizes**2).sum())
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, {0: 1, 1: 1, 2: 2})[1], [.25, .25, .5])


def test_stage1_files(tmp_path):
    codes, _ = make(100)
    js, cs = tmp_path / "doremi.json", tmp_path / "w.csv"
    js.write_text(json.dumps({"0": 0.2, "1": 0.2, "2": 0.6}))
    cs.write_text("bucket,weight\n0,1\n1,1\n2,3\n")
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, str(js))[1], [0.2, 0.2, 0.6])
    np.testing.assert_allclose(mix.stage1_weights(codes, LEVELS, cs)[1], [0.2, 0.2, 0.6])
    pr = mix.probabilities(codes, LEVELS, stage1=js)
    assert pr[codes[:, 0] == 2].sum() == pytest.approx(0.6)

    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"0": 1.0, "2": 1.0}))
    with pytest.warns(UserWarning, match=r"no weight for 1 occupied L1 bucket.*\[1\]"):
        idx, _ = mix.sample(codes, 500, levels=LEVELS, stage1=missing, replace=True)
    assert not np.isin(idx, np.flatnonzero(codes[:, 0] == 1)).any()

    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"0": 1, "1": 1, "2": 1, "7": 1, "x": 2}))
    with pytest.raises(ValueError, match=r"stage1 file '.*unknown.json' names 2 bucket\(s\) .*\['7', 'x'\]"):
        mix.stage1_weights(codes, LEVELS, str(unknown))
    neg = tmp_path / "neg.csv"
    neg.write_text("bucket,weight\n0,1\n1,-1\n2,1\n")
    with pytest.raises(ValueError, match=r"neg.csv' weights must be finite and >= 0; bucket 1"):
        mix.probabilities(codes, LEVELS, stage1=neg)
    zero = tmp_path / "zero.csv"
    zero.write_text("bucket,weight\n0,0\n1,0\n2,0\n")
    with pytest.raises(ValueError, match=r"zero.csv' gives every occupied L1 bucket weight 0"):
        mix.probabilities(codes, LEVELS, stage1=zero)
    bad = tmp_path / "bad.csv"
    bad.write_text("id,w\n0,1\n")
    with pytest.raises(ValueError, match=r"bad.csv' must have a header 'bucket,weight'"):
        mix.probabilities(codes, LEVELS, stage1=bad)
    with pytest.raises(FileNotFoundError, match=r"nope.json' does not exist"):
        mix.probabilities(codes, LEVELS, stage1=tmp_path / "nope.json")
    with pytest.raises(ValueError, match=r"stage1 .*nan"):
        mix.probabilities(codes, LEVELS, stage1={0: float("nan"), 1: 1, 2: 1})


def test_replacement_matches_stage1_weights():
    codes, _ = make(2000, levels=(6, 4, 3), seed=3)
    n = 200_000
    for stage1 in ("uniform", "proportional", 0.5):
        idx, plan = mix.sample(codes, n, levels=(6, 4, 3), stage1=stage1, replace=True, seed=1)
        ids, w = mix.stage1_weights(codes, (6, 4, 3), stage1)
        freq = np.bincount(codes[idx, 0], minlength=6)[ids] / n
        se = np.sqrt(w * (1 - w) / n)
        assert np.all(np.abs(freq - w) < 5 * se), (stage1, freq, w)
        assert plan["drawn"].sum() == n and plan["expected"].sum() == pytest.approx(n)


def test_coverage_equal_counts_per_sub_bucket():
    codes, _ = make(3000, levels=(4, 5, 3), seed=4)
    n = 200_000
    idx, plan = mix.sample(codes, n, levels=(4, 5, 3), depth=2, stage2="coverage", replace=True, seed=2)
    # within an L1 bucket every occupied sub-bucket has the same expected count
    for b1 in np.unique(plan["l1"]):
        e = plan["expected"][plan["l1"] == b1]
        assert np.allclose(e, e[0])
    pe = plan["expected"] / n
    assert np.all(np.abs(plan["drawn"] - plan["expected"]) < 5 * np.sqrt(n * pe * (1 - pe)))
    # documents are uniform inside a sub-bucket: compare the two halves of the biggest one
    sub = hb.bucket_ids(codes, 2, (4, 5, 3))
    big = np.flatnonzero(sub == plan["bucket"][np.argmax(plan["size"])])
    hits = np.bincount(idx, minlength=len(codes))[big]
    half = big.size // 2
    assert abs(hits[:half].mean() - hits[half:2 * half].mean()) < 0.2 * hits.mean()


@pytest.mark.parametrize("replace", [True, False])
def test_quality_only_draws_top_documents(replace):
    codes, _ = make(1000, seed=5)
    q = np.random.default_rng(5).random(1000)
    idx, plan = mix.sample(codes, 250, levels=LEVELS, depth=2, stage2="quality", quality=q,
                           p=0.3, replace=replace, seed=3)
    sub = hb.bucket_ids(codes, 2, LEVELS)
    thr = {b: np.quantile(q[sub == b], 0.7) for b in np.unique(sub)}
    assert all(q[i] >= thr[sub[i]] for i in idx)
    np.testing.assert_array_equal(plan["eligible"], [np.sum(q[sub == b] >= thr[b]) for b in plan["bucket"]])


@pytest.mark.parametrize("stage2", mix.STAGE2_RULES)
@pytest.mark.parametrize("depth", [2, 3])
def test_without_replacement_allocation(stage2, depth):
    codes, q = make(1000, seed=6)
    budget = 300
    idx, plan = mix.sample(codes, budget, levels=LEVELS, depth=depth, stage2=stage2, quality=q,
                           stage1="uniform", seed=4)
    assert idx.dtype == np.int64 and idx.size == budget == np.unique(idx).size
    assert plan["drawn"].sum() == budget and plan["target"].sum() == pytest.approx(budget)
    assert np.all(plan["drawn"] <= plan["eligible"]) and np.all(plan["target"] <= plan["eligible"] + 1e-9)
    if stage2 == "random":  # allocation is per L1 bucket
        for b1 in np.unique(plan["l1"]):
            m = plan["l1"] == b1
            assert abs(plan["drawn"][m].sum() - plan["target"][m].sum()) < 2
    else:
        assert np.all(np.abs(plan["drawn"] - plan["target"]) < 2)
    pr = mix.probabilities(codes, LEVELS, depth=depth, stage2=stage2, quality=q)
    assert (pr[idx] > 0).all()


def test_without_replacement_saturation_and_unbiased():
    # one sub-bucket with 3 documents next to big ones: coverage wants more than it has
    codes = np.array([[0, 0]] * 3 + [[0, 1]] * 100 + [[1, 0]] * 200, np.int32)
    idx, plan = mix.sample(codes, 120, levels=(2, 2), depth=2, seed=0)
    assert plan["drawn"].tolist()[0] == 3 and plan["target"][0] == 3
    # the sibling [0, 1] takes the 57 the saturated [0, 0] cannot give: L1 keeps its 60 : 60
    np.testing.assert_allclose(plan["target"], [3, 57, 60])
    np.testing.assert_array_equal(plan["l1_drawn"], [60, 60, 60])
    assert np.all(np.abs(plan["drawn"] - plan["target"]) < 2)
    # across seeds the mean count per sub-bucket equals the target
    codes, _ = make(400, seed=7)
    draws = np.array([mix.sample(codes, 77, levels=LEVELS, depth=3, seed=s)[1]["drawn"]
                      for s in range(300)])
    target = mix.sample(codes, 77, levels=LEVELS, depth=3)[1]["target"]
    assert np.all(np.abs(draws.mean(0) - target) < 0.15)


def test_budget_equal_to_and_above_pool():
    codes, q = make(100, seed=8)
    pr = mix.probabilities(codes, LEVELS, stage2="quality", quality=q)
    pool = int((pr > 0).sum())
    idx, _ = mix.sample(codes, pool, levels=LEVELS, stage2="quality", quality=q)
    assert sorted(idx.tolist()) == np.flatnonzero(pr > 0).tolist()
    with pytest.raises(ValueError, match=rf"sample: budget={pool + 1} exceeds the pool of {pool} documents"):
        mix.sample(codes, pool + 1, levels=LEVELS, stage2="quality", quality=q)
    assert mix.sample(codes, pool + 1, levels=LEVELS, stage2="quality", quality=q, replace=True)[0].size == pool + 1


@pytest.mark.parametrize("replace", [True, False])
def test_determinism(replace):
    codes, q = make(500, seed=9)
    a = mix.sample(codes, 100, levels=LEVELS, seed=11, replace=replace)[0]
    b = mix.sample(codes, 100, levels=LEVELS, seed=11, replace=replace)[0]
    c = mix.sample(codes, 100, levels=LEVELS, seed=12, replace=replace)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("replace", [True, False])
def test_token_budget(replace):
    codes, q = make(600, seed=10)
    tokens = np.random.default_rng(10).integers(0, 500, 600)
    budget = 20_000
    idx, plan = mix.sample(codes, budget, levels=LEVELS, tokens=tokens, replace=replace, seed=5)
    got = tokens[idx].sum()
    assert got >= budget and got - tokens[idx[-1]] < budget  # stop at the draw that reaches it
    assert plan["tokens"].sum() == got and plan["drawn"].sum() == idx.size
    if not replace:
        assert np.unique(idx).size == idx.size
        assert np.all(np.abs(plan["drawn"] - plan["target"]) < 2)
        with pytest.raises(ValueError, match=r"budget=.* exceeds the pool of .* tokens"):
            mix.sample(codes, float(tokens.sum() + 1), levels=LEVELS, tokens=tokens)
    assert mix.sample(codes, 0, levels=LEVELS, tokens=tokens, replace=replace)[0].size == 0


def test_plan_columns():
    codes, q = make(300, seed=12)
    idx, plan = mix.sample(codes, 50, levels=LEVELS, depth=3, stage2="quality", quality=q)
    s = len(plan["bucket"])
    assert all(len(v) == s for v in plan.values())
    np.testing.assert_array_equal(plan["l1"], plan["bucket"] // (LEVELS[1] * LEVELS[2]))
    np.testing.assert_array_equal(plan["bucket"], np.unique(hb.bucket_ids(codes, 3, LEVELS)))
    assert plan["mass"].sum() == pytest.approx(1.0) and plan["size"].sum() == 300


def test_empty_and_torch():
    torch = pytest.importorskip("torch")
    empty = np.zeros((0, 3), np.int32)
    assert mix.probabilities(empty, LEVELS).size == 0
    idx, plan = mix.sample(empty, 0, levels=LEVELS)
    assert idx.size == 0 and plan["bucket"].size == 0
    codes, q = make(50)
    np.testing.assert_array_equal(
        mix.probabilities(torch.from_numpy(codes), LEVELS, stage2="quality", quality=torch.from_numpy(q)),
        mix.probabilities(codes, LEVELS, stage2="quality", quality=q))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(quality=np.array([0.5] * 5 + [np.nan] + [0.5] * 34), stage2="quality"), ValueError,
     r"sample: quality must be finite; row 5 is nan"),
    (dict(stage2="quality"), ValueError, r"stage2='quality' needs quality scores"),
    (dict(quality=np.ones(39), stage2="quality"), ValueError, r"quality must be a 1-d array \[N\] with N = 40"),
    (dict(quality=np.ones(40), stage2="quality", p=0), ValueError, r"p must be a fraction in \(0, 1\]"),
    (dict(quality=np.ones(40), stage2="quality", p=1.5), ValueError, r"p must be a fraction"),
    (dict(stage2="topk"), ValueError, r"stage2 must be one of"),
    (dict(depth=4), ValueError, r"sample: depth must be an integer in \[1, 3\]"),
    (dict(stage1="unifrom"), ValueError, r"stage1 must be 'uniform', 'proportional'"),
    (dict(stage1=-1.0), ValueError, r"stage1 temperature must be > 0"),
    (dict(stage1=[1, 2]), TypeError, r"stage1 must be"),
    (dict(budget=-1), ValueError, r"sample: budget must be an integer >= 0"),
    (dict(budget=2.5), TypeError, r"sample: budget must be an integer"),
    (dict(budget=41), ValueError, r"budget=41 exceeds the pool of 40 documents"),
    (dict(tokens=-np.ones(40)), ValueError, r"sample: tokens must be >= 0; row 0"),
    (dict(tokens=np.ones(3)), ValueError, r"tokens must be a 1-d array \[N\] with N = 40"),
    (dict(tokens=np.ones(40), budget=float("inf")), ValueError, r"budget must be a finite number of tokens"),
    (dict(tokens=np.zeros(40), budget=5.0, replace=True), ValueError, r"budget=5.0 tokens cannot be met"),
    (dict(codes=np.zeros((40, 3))), TypeError, r"sample: codes must be a 2-d integer array"),
    (dict(codes=np.full((40, 3), 3, np.int32)), ValueError, r"sample: codes\[0, 0\] = 3 is outside \[0, 3\)"),
])
def test_bad_inputs(kwargs, exc, match):
    codes, _ = make(40)
    kwargs = {"codes": codes, "budget": 10, "levels": LEVELS, **kwargs}
    with pytest.raises(exc, match=match):
        mix.sample(kwargs.pop("codes"), kwargs.pop("budget"), **kwargs)


def test_probabilities_bad_inputs():
    codes, _ = make(40)
    with pytest.raises(ValueError, match=r"probabilities: quality must be finite; row 2 is inf"):
        mix.probabilities(codes, LEVELS, stage2="quality", quality=np.r_[1, 1, np.inf, np.ones(37)])
    with pytest.raises(TypeError, match=r"probabilities: quality must be a numeric array"):
        mix.probabilities(codes, LEVELS, stage2="quality", quality=np.array(["a"] * 40))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete weight file raises no warning
        mix.probabilities(codes, LEVELS, stage1={0: 1, 1: 2, 2: 3})
