"""hermes.explore / `hermes explore` / `hermes demo`: the page's numbers against numpy, its bounds, its errors, and
the page itself in a real headless Chromium (marked `browser`; skipped with a reason where Chromium is absent)."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import hermes
from hermes import explorer
from hermes.cli import main
from hermes.label import _schema, label_columns

from conftest import DATA, child_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def page_data(path) -> dict:
    html = Path(path).read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="hermes-data">(.*?)</script>', html, re.S)
    assert m, "no data element in the page"
    return json.loads(m.group(1))


def texts_of(n=None):
    with open(DATA / "pypi_20k.jsonl") as f:
        return [json.loads(line)["summary"] for line in f][:n]


def cut(t, chars=explorer.TEXT_CHARS):
    return explorer._cut(t[:explorer.KEEP_CHARS], chars)


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    """The bundled data labeled by a residual k-means model (3 x 256), with a mix plan: codes [20000, 3], paths."""
    d = tmp_path_factory.mktemp("explore_real")
    x = np.load(DATA / "pypi_minilm_20k.f16.npy")
    model = hermes.fit(x, (256, 256, 256), method="residual_kmeans", progress=False, seed=0)
    hermes.label(DATA / "pypi_minilm_20k.f16.npy", model, d / "labels", progress=False)
    codes = hermes.read_labels(d / "labels").codes
    r = CliRunner().invoke(main, ["mix", str(d / "labels"), "--budget", "5000", "--depth", "2", "--stage1", "2.0",
                                  "--out", str(d / "sample.parquet")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    page = d / "page.html"
    rep = hermes.explore(d / "labels", DATA / "pypi_20k.jsonl", page, text_field="summary",
                         plan=d / "sample.plan.parquet", embeddings=DATA / "pypi_minilm_20k.f16.npy", progress=False)
    return dict(dir=d, x=x, codes=codes, page=page, rep=rep, plan=d / "sample.plan.parquet", labels=d / "labels")


def write_labels(path: Path, codes: np.ndarray, levels, fingerprint="synthetic"):
    """A labels file in `hermes label`'s format for given codes (the writer's own columns and metadata)."""
    meta = {"format": "hermes-labels", "format_version": 1, "rows": int(codes.shape[0]), "source": str(path),
            "shard": path.name, "model": {"levels": list(levels), "fingerprint": fingerprint, "d": 4}}
    schema = _schema(levels, meta)
    pq.write_table(pa.Table.from_pydict(label_columns(codes.astype(np.int32), levels), schema=schema), path)


# ------------------------------------------------------------------------------- the page's numbers
def test_real_page_numbers(real):
    data, codes, n = page_data(real["page"]), real["codes"], real["codes"].shape[0]
    nodes = data["nodes"]
    assert data["n"] == n == real["rep"].rows and data["levels"] == [256, 256, 256]
    # every occupied L1 bucket is on the page, with its exact size; sizes of shown children + others = parent
    l1 = np.bincount(codes[:, 0], minlength=256)
    root = nodes[0]
    assert sorted(int(nodes[i]["id"]) for i in root["ch"]) == np.flatnonzero(l1).tolist() and "o" not in root
    assert data["occupied"] == [len(np.unique(codes[:, 0])), len(np.unique(codes[:, 0] * 256 + codes[:, 1])),
                                len(np.unique((codes[:, 0] * 256 + codes[:, 1]) * 256 + codes[:, 2]))]
    texts = texts_of()
    paths = {".".join(map(str, c)) for c in codes}
    prefix = {d: np.array([".".join(map(str, c[:d])) for c in codes]) for d in (1, 2, 3)}
    checked = 0
    for nd in nodes[1:]:
        members = np.flatnonzero(prefix[nd["d"]] == nd["id"])
        assert nd["n"] == members.size, nd["id"]
        kids = nd.get("ch", [])
        assert len(kids) <= explorer.MAX_CHILDREN[nd["d"]] if nd["d"] < 3 else not kids
        if nd["d"] < 3:
            assert sum(nodes[i]["n"] for i in kids) + nd.get("o", {}).get("n", 0) == nd["n"]
            nkids = len({p for p in prefix[nd["d"] + 1][members]})
            assert nd["k"] == nkids and len(kids) + nd.get("o", {}).get("b", 0) == nkids
        # the samples are texts of the bucket's own documents
        own = {cut(texts[r]) for r in members}
        assert all(data["texts"][j] in own for j in nd.get("s", [])), nd["id"]
        if nd["d"] == 1:
            assert len(nd["s"]) == min(explorer.SAMPLES[0], nd["n"]) and nd["m"] == min(nd["n"], 256)
            xs = real["x"][members].astype(np.float64)
            xs /= np.linalg.norm(xs, axis=1, keepdims=True)
            assert abs(nd["c"] - np.linalg.norm(xs.sum(0)) / members.size) < 2e-4
            checked += 1
    assert checked == 256 and len(paths) == data["occupied"][2]
    # the plan: L1 masses are the stage-1 weights (tau = 2: proportional to n ** 0.5); targets and drawn counts
    plan = pq.read_table(real["plan"]).to_pydict()
    w = {int(nodes[i]["id"]): nodes[i]["w"] for i in root["ch"]}
    want = np.sqrt(l1) / np.sqrt(l1).sum()
    assert max(abs(w[b] - want[b]) for b in w) < 1e-7
    drawn = {}
    for l1id, dr in zip(plan["l1"], plan["drawn"]):
        drawn[l1id] = drawn.get(l1id, 0) + dr
    assert {int(nodes[i]["id"]): nodes[i]["dr"] for i in root["ch"]} == {b: drawn.get(b, 0) for b in w}
    assert sum(nodes[i]["dr"] for i in root["ch"]) == 5000
    # the page says where everything came from, and nothing in it loads from elsewhere
    html = real["page"].read_text()
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    tags = re.findall(r"<(?:script|link|img|iframe)[^>]*>", html.split('id="hermes-data">')[0])
    assert all("src=" not in t for t in tags) and all('href="data:' in t for t in tags if t.startswith("<link"))


def test_terms_are_distinctive(real):
    """Each L1 bucket's first term is held by more of its documents than of the corpus (class-TF-IDF)."""
    data, codes = page_data(real["page"]), real["codes"]
    toks = [explorer._tokens(t[:explorer.KEEP_CHARS]) for t in texts_of()]
    df = {}
    for s in toks:
        for t in s:
            df[t] = df.get(t, 0) + 1
    n, lifts = len(toks), []
    for i in data["nodes"][0]["ch"]:
        nd = data["nodes"][i]
        if not nd.get("t"):
            continue
        term = nd["t"].split()[0]
        members = np.flatnonzero(codes[:, 0] == int(nd["id"]))
        inside = np.mean([term in toks[r] for r in members])
        lifts.append(inside / (df[term] / n))
        assert df[term] / n <= explorer.COMMON
    assert len(lifts) >= 250 and min(lifts) > 2 and np.median(lifts) > 20


def test_samples_are_the_lowest_keys(real):
    """The reservoir is a seeded bottom-k sample: each L1 bucket's samples are its documents of lowest key."""
    data, codes = page_data(real["page"]), real["codes"]
    keys = explorer._keys(np.arange(codes.shape[0]), 0, 0)
    texts = texts_of()
    for i in data["nodes"][0]["ch"][:40]:
        nd = data["nodes"][i]
        members = np.flatnonzero(codes[:, 0] == int(nd["id"]))
        first = members[np.argsort(keys[members])][:len(nd["s"])]
        assert [data["texts"][j] for j in nd["s"]] == [cut(texts[r]) for r in first]


def test_same_page_whatever_the_batching_and_seeded(real, tmp_path):
    """One streaming pass: the page does not depend on the batch size (keys hash the row, counts are exact);
    the seed picks the samples."""
    kw = dict(text_field="summary", plan=real["plan"], embeddings=DATA / "pypi_minilm_20k.f16.npy", progress=False)
    a = tmp_path / "a.html"
    hermes.explore(real["labels"], DATA / "pypi_20k.jsonl", a, batch_size=777, **kw)
    da, db = page_data(a), page_data(real["page"])
    for nd_a, nd_b in zip(da["nodes"], db["nodes"]):
        c_a, c_b = nd_a.pop("c", None), nd_b.pop("c", None)  # float32 sums in another order: rounding only
        assert (c_a is None) == (c_b is None) and (c_a is None or abs(c_a - c_b) < 1e-4)
    assert da == db
    hermes.explore(real["labels"], DATA / "pypi_20k.jsonl", tmp_path / "s1.html", seed=1, **kw)
    d1 = page_data(tmp_path / "s1.html")
    assert [nd["n"] for nd in d1["nodes"]] == [nd["n"] for nd in db["nodes"]]
    assert sum(nd.get("s") != nd2.get("s") or d1["texts"] != db["texts"] for nd, nd2 in
               zip(d1["nodes"], db["nodes"])) > 0
    assert [d1["texts"][j] for j in d1["nodes"][1]["s"]] != [db["texts"][j] for j in db["nodes"][1]["s"]]


def _synthetic(tmp_path, name, levels, per_l12, rng):
    """Labels where every L12 bucket holds per_l12 documents in per_l12 distinct L123 buckets, and parquet texts of
    60 random words (longer than the page keeps)."""
    k1, k2, k3 = levels
    n = k1 * k2 * per_l12
    l12 = np.repeat(np.arange(k1 * k2), per_l12)
    c3 = (np.tile(np.arange(per_l12), k1 * k2) * 7 + l12) % k3
    codes = np.stack([l12 // k2, l12 % k2, c3], 1)[rng.permutation(n)]
    write_labels(tmp_path / f"{name}.parquet", codes, levels)
    words = np.array([f"w{i:05d}" for i in range(20000)])
    text = [" ".join(words[rng.integers(0, words.size, 60)]) for _ in range(4096)]
    pq.write_table(pa.table({"text": pa.array([text[i % 4096] for i in range(n)])}), tmp_path / f"{name}.texts.parquet")
    return tmp_path / f"{name}.parquet", tmp_path / f"{name}.texts.parquet"


def test_page_bounded_for_256x256_occupied_l12(tmp_path):
    """The worst case for the page: every one of the 65,536 L12 buckets occupied, each with more L123 children than
    the page keeps, every text longer than the page keeps (589,824 documents): under 15 MB."""
    labels, texts = _synthetic(tmp_path, "full", (256, 256, 256), 9, np.random.default_rng(7))
    rep = hermes.explore(labels, texts, tmp_path / "page.html", text_field="text", progress=False, corpus_docs=50_000)
    assert rep.occupied == [256, 65536, 65536 * 9]
    assert rep.shown == [256, 256 * explorer.MAX_CHILDREN[1], 256 * explorer.MAX_CHILDREN[1] * explorer.MAX_CHILDREN[2]]
    assert rep.bytes == (tmp_path / "page.html").stat().st_size < 15 * 2 ** 20
    data = page_data(tmp_path / "page.html")
    assert all(nd.get("o", {}).get("b") == 256 - 32 for nd in data["nodes"] if nd["d"] == 1)
    assert all(nd.get("o", {}).get("b") == 1 for nd in data["nodes"] if nd["d"] == 2)


def test_page_size_does_not_grow_with_documents(tmp_path):
    """Once every bucket's sample is full, 4x the documents give no larger a page (smaller here: the L123 children,
    4x larger, fall less often in their parent's fixed-size sample, so fewer of them carry a sample text)."""
    sizes = []
    for per in (20, 80):
        labels, texts = _synthetic(tmp_path, f"p{per}", (16, 16, 16), per, np.random.default_rng(per))
        rep = hermes.explore(labels, texts, tmp_path / f"p{per}.html", text_field="text", progress=False)
        assert rep.occupied[:2] == [16, 256] and rep.text_chars == explorer.TEXT_CHARS
        sizes.append(rep.bytes)
    assert sizes[1] <= 1.03 * sizes[0], sizes


def test_tiny_and_shallow_labelings(tmp_path):
    """One level, two levels, a single document, and parquet texts with nulls."""
    for levels, n in (((7,), 30), ((5, 3), 40), ((4, 4, 4, 2), 1)):
        rng = np.random.default_rng(n)
        codes = np.stack([rng.integers(0, k, n) for k in levels], 1)
        write_labels(tmp_path / "l.parquet", codes, levels)
        texts = [None if i % 7 == 3 else f"alpha beta topic{c[0]} words here" for i, c in enumerate(codes)]
        pq.write_table(pa.table({"t": pa.array(texts, pa.string())}), tmp_path / "t.parquet")
        rep = hermes.explore(tmp_path / "l.parquet", tmp_path / "t.parquet", tmp_path / "p.html", text_field="t",
                             progress=False)
        data = page_data(tmp_path / "p.html")
        assert data["depth"] == min(len(levels), 3) and rep.rows == n
        assert sum(data["nodes"][i]["n"] for i in data["nodes"][0]["ch"]) == n
        assert rep.occupied[0] == len(np.unique(codes[:, 0]))


# ---------------------------------------------------------------------------------------- errors
def test_errors_name_the_argument(real, tmp_path):
    lab, texts = real["labels"], DATA / "pypi_20k.jsonl"
    short = tmp_path / "short.jsonl"
    short.write_text("".join(open(texts).readlines()[:19990]))
    with pytest.raises(ValueError, match=r"explore: texts .*short.jsonl hold 19,990 texts, the labels 20,000"):
        hermes.explore(lab, short, tmp_path / "p.html", text_field="summary", progress=False)
    longer = tmp_path / "long.jsonl"
    longer.write_text(open(texts).read() + '{"summary": "one more"}\n')
    with pytest.raises(ValueError, match="more texts than the labels' 20,000 rows"):
        hermes.explore(lab, longer, tmp_path / "p.html", text_field="summary", progress=False)
    with pytest.raises(ValueError, match=r"pypi_20k.jsonl line 1 has no field 'text' \(it has \['name', 'summary'\]\)"):
        hermes.explore(lab, texts, tmp_path / "p.html", text_field="text", progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"summary": "a"}\n{"summary": \n')
    with pytest.raises(ValueError, match="bad.jsonl line 2 is not valid JSON"):
        hermes.explore(lab, bad, tmp_path / "p.html", text_field="summary", progress=False)
    with pytest.raises(ValueError, match=r"embeddings .* hold 100 rows, the labels 20,000"):
        np.save(tmp_path / "e.npy", np.ones((100, 4), np.float32))
        hermes.explore(lab, texts, tmp_path / "p.html", text_field="summary", embeddings=tmp_path / "e.npy",
                       progress=False)
    with pytest.raises(ValueError, match="out must be an .html file"):
        hermes.explore(lab, texts, tmp_path / "p.txt", text_field="summary", progress=False)
    with pytest.raises(FileNotFoundError, match="explore: texts: no such file"):
        hermes.explore(lab, tmp_path / "nope.jsonl", tmp_path / "p.html", text_field="summary", progress=False)
    # a plan drawn from other labels (sizes differ), and an output that would overwrite an input
    other = tmp_path / "other"
    other.mkdir()
    shifted = real["codes"].copy()
    shifted[:, 1] = (shifted[:, 1] + 1) % 256  # the same L1 sizes, other L12 buckets
    write_labels(other / "l.parquet", shifted, (256, 256, 256), fingerprint=None)
    (other / "t.jsonl").write_text(open(texts).read())
    with pytest.raises(ValueError, match=r"plan .*sample.plan.parquet row \d+: bucket \d+ holds \d+ documents in the "
                                         r"plan but \d+ in these labels"):
        hermes.explore(other / "l.parquet", other / "t.jsonl", tmp_path / "p.html", text_field="summary",
                       plan=real["plan"], progress=False)
    (other / "link.html").symlink_to(other / "t.jsonl")  # an .html name that is an input under another name
    with pytest.raises(ValueError, match=r"explore: out .*link.html is also the texts file .*t.jsonl; refusing"):
        hermes.explore(other / "l.parquet", other / "t.jsonl", other / "link.html", text_field="summary",
                       progress=False)
    assert not (tmp_path / "p.html").exists() and (other / "t.jsonl").stat().st_size > 0
    # an existing file that is not an explore page is never replaced; a page explore wrote is
    (tmp_path / "notes.html").write_text("<html>my notes</html>")
    with pytest.raises(ValueError, match=r"out .*notes.html exists and is not a file this command writes \(a hermes "
                                         r"explore page\)"):
        hermes.explore(lab, texts, tmp_path / "notes.html", text_field="summary", progress=False)
    assert (tmp_path / "notes.html").read_text() == "<html>my notes</html>"
    shutil.copy(real["page"], tmp_path / "again.html")
    hermes.explore(lab, texts, tmp_path / "again.html", text_field="summary", progress=False, seed=5)
    assert page_data(tmp_path / "again.html")["seed"] == 5


def test_cli_explore_and_errors(real, tmp_path):
    out = tmp_path / "cli.html"
    r = CliRunner().invoke(main, ["explore", str(real["labels"]), "--texts", str(DATA / "pypi_20k.jsonl"),
                                  "--text-field", "summary", "--out", str(out), "--seed", "3", "--no-progress"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert re.search(r"explored 20,000 documents \(256 L1, [\d,]+ L12, [\d,]+ L123 buckets on the page\) in .* -> "
                     r".*cli.html \(\d+\.\d MB\)", r.output)
    assert page_data(out)["seed"] == 3
    r = CliRunner().invoke(main, ["explore", str(real["labels"]), "--texts", str(DATA / "pypi_20k.jsonl"),
                                  "--text-field", "nope", "--out", str(out)])
    assert r.exit_code == 1 and "Error: explore: texts file" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["explore", str(real["labels"]), "--out", str(out), "--text-field", "x"])
    assert r.exit_code == 2 and "Missing option '--texts'" in r.output


def test_demo_missing_data_is_a_clear_error(tmp_path):
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), "--data", str(tmp_path)])
    assert r.exit_code == 1 and "the bundled data (pypi_minilm_20k.f16.npy and pypi_20k.jsonl) is not in" in r.output
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("keep")
    r = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "d"), "--data", str(DATA)])
    assert r.exit_code == 1 and "holds files the demo does not write (mine.txt)" in r.output


@pytest.mark.slow
def test_demo_runs_the_main_job(tmp_path):
    """`hermes demo` as a user runs it: a child process, from a directory holding examples/data (here a link to
    the repository's), with the hermes under test."""
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "data").symlink_to(DATA)
    r = subprocess.run([sys.executable, "-m", "hermes", "demo", "--out", "out"], cwd=tmp_path, env=child_env(),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    for cmd in ("$ hermes fit", "$ hermes label", "$ hermes stats", "$ hermes mix", "$ hermes explore"):
        assert cmd in r.stdout
    assert re.search(r"L12 +13744 ", r.stdout) or re.search(r"L12 +\d+ +\d", r.stdout)
    assert "pool sizes" in r.stdout and "drew 5,000 documents" in r.stdout
    page = tmp_path / "out" / "explore.html"
    assert page.as_uri() in r.stdout and page_data(page)["n"] == 20000


# ------------------------------------------------------------------------------- a real browser
def _browser_skip():
    if CHROMIUM is None:
        return "no chromium on PATH (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    return None


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")
def test_browser_dump_dom(real, tmp_path):
    """chromium's own --dump-dom: the page's script ran (one tile per L1 bucket, the detail panel filled)."""
    r = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--virtual-time-budget=5000", "--dump-dom", real["page"].as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    assert len(re.findall(r'<div class="tile[^"]*"[^>]*data-node=', dom)) == 256
    assert re.search(r'id="detail"[^>]*><h2>', dom) and "<h3>Children" in dom and "20,000 documents" in dom
    assert len(re.findall(r"<svg viewBox=\"0 0 \d+ \d+\"", dom)) == 3  # the size distribution per depth


@pytest.mark.browser
@pytest.mark.skipif(_browser_skip() is not None, reason=str(_browser_skip()))
def test_browser_page(real, tmp_path):
    """In headless Chromium driven by playwright: no console or page error, no network request, every L1 bucket
    drawn, a click shows children and samples, the search finds a bucket by a term it shows; screenshots saved."""
    from playwright.sync_api import sync_playwright

    data = page_data(real["page"])
    nodes = data["nodes"]
    shots = Path(os.environ.get("HERMES_TEST_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    errors, requests = [], []
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS[1:],
            viewport={"width": 1400, "height": 1000})
        try:
            page = ctx.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            ctx.on("request", lambda req: requests.append(req.url))
            page.goto(real["page"].as_uri())
            page.wait_for_selector("#map .tile")
            tiles = page.eval_on_selector_all("#map .tile[data-node]", "els => els.map(e => e.dataset.id)")
            assert sorted(map(int, tiles)) == sorted(int(nodes[i]["id"]) for i in nodes[0]["ch"])
            assert len(tiles) == 256
            page.screenshot(path=str(shots / "explore_root.png"), full_page=True)

            # click the largest L1 bucket: the map shows its children, the panel its samples and children
            big = max(nodes[0]["ch"], key=lambda i: nodes[i]["n"])
            b = nodes[big]
            page.click(f'#map .tile[data-id="{b["id"]}"]')
            assert page.inner_text("#detail h2") == f'L1 {b["id"]} bucket'
            kid_ids = page.eval_on_selector_all("#map .tile[data-node]", "els => els.map(e => e.dataset.id)")
            assert sorted(kid_ids) == sorted(nodes[i]["id"] for i in b["ch"]) and kid_ids
            assert all(k.startswith(b["id"] + ".") for k in kid_ids)
            samples = page.eval_on_selector_all("#detail ol.samples li", "els => els.map(e => e.textContent)")
            assert samples == [data["texts"][j] for j in b["s"]] and len(samples) == 8
            rows = page.eval_on_selector_all("#detail tr.kid", "els => els.map(e => e.dataset.id)")
            assert sorted(rows) == sorted(kid_ids)
            assert "L1 " + b["id"] in page.inner_text("#crumbs")
            page.screenshot(path=str(shots / "explore_l1.png"), full_page=True)

            # a child row in the panel leads one level down; its own samples and terms show
            child = max(b["ch"], key=lambda i: nodes[i]["n"])
            page.click(f'#detail tr.kid[data-id="{nodes[child]["id"]}"]')
            assert page.inner_text("#detail h2") == f'L12 {nodes[child]["id"]} bucket'
            assert page.locator("#detail ol.samples li").count() == len(nodes[child]["s"]) > 0

            # the search finds a bucket by a term the page shows for it
            target = next(nodes[i] for i in b["ch"] if nodes[i].get("t"))
            term = target["t"].split()[0]
            page.click(f'#crumbs a[data-go="{big}"]')
            shown_terms = page.inner_text(f'#detail tr.kid[data-id="{target["id"]}"]')
            assert term in shown_terms
            page.fill("#search", term)
            hit = page.locator(f'#results .hit[data-id="{target["id"]}"]')
            assert hit.count() == 1 and term in hit.inner_text()
            page.screenshot(path=str(shots / "explore_search.png"))
            hit.click()
            assert page.inner_text("#detail h2") == f'L12 {target["id"]} bucket'
            assert page.inner_text("#crumbs").endswith(f'L12 {target["id"]}')  # the map now shows its children
            kid_ids = page.eval_on_selector_all("#map .tile[data-node]", "els => els.map(e => e.dataset.id)")
            assert sorted(kid_ids) == sorted(nodes[i]["id"] for i in target["ch"])

            # a term no bucket shows says so; the colour modes all draw
            page.fill("#search", "zzzqqqxxx")
            assert "no bucket shows the term" in page.inner_text("#results")
            for mode in ("share", "cos", "w", "ratio"):
                page.select_option("#colour", mode)
                assert page.locator("#map .tile").count() > 0 and page.inner_text("#legend")
            assert page.locator("#hists svg").count() == 3
        finally:
            ctx.close()
    assert errors == []
    assert requests == [real["page"].as_uri()], requests
    assert (shots / "explore_root.png").stat().st_size > 10_000
