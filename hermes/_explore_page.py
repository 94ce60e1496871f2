"""The HTML page that hermes.explore fills in: all CSS and JS inline, no network request, works from file://.

__TITLE__ becomes the HTML-escaped title and __DATA__ the page's data (JSON with <, > and & escaped) inside a
``<script type="application/json">`` element.
"""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="hermes explore">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
:root { --ink:#1d2330; --muted:#5d6677; --line:#dfe3ea; --bg:#f6f7f9; --card:#fff; --accent:#2459a8; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
       color:var(--ink); background:var(--bg); }
header { display:flex; align-items:center; gap:18px; padding:10px 18px; background:#1f2a3c; color:#fff; flex-wrap:wrap; }
header .brand { font-size:17px; white-space:nowrap; } header .brand b { color:#9cc3ff; }
#summary { color:#c9d3e3; font-size:13px; flex:1; min-width:260px; }
.search { position:relative; width:360px; }
#search { width:100%; padding:7px 10px; border-radius:6px; border:1px solid #51607a; background:#2b374c; color:#fff; font-size:14px; }
#search::placeholder { color:#9aa7bb; }
#results { position:absolute; top:36px; right:0; width:460px; max-height:420px; overflow:auto; background:#fff; color:var(--ink);
           border:1px solid var(--line); border-radius:8px; box-shadow:0 8px 28px rgba(0,0,0,.22); z-index:20; }
#results .hit { padding:7px 11px; border-bottom:1px solid #eef0f4; cursor:pointer; }
#results .hit:hover, #results .hit.active { background:#eef4ff; }
#results .hit .nm { font-weight:600; } #results .hit .sz { color:var(--muted); font-size:12px; margin-left:6px; }
#results .hit .tm { color:var(--muted); font-size:12px; } #results .none { padding:10px; color:var(--muted); }
mark { background:#ffe58a; color:inherit; border-radius:2px; }
main { display:grid; grid-template-columns:minmax(0,1.65fr) minmax(320px,1fr); gap:14px; padding:14px 18px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:10px; }
#left { padding:10px 12px 12px; }
.bar { display:flex; align-items:center; justify-content:space-between; gap:10px; margin-bottom:8px; flex-wrap:wrap; }
#crumbs { font-size:14px; } #crumbs a { color:var(--accent); cursor:pointer; text-decoration:none; } #crumbs a:hover { text-decoration:underline; }
#crumbs .sep { color:#aab; margin:0 6px; } #crumbs b { font-weight:600; }
.bar label { color:var(--muted); font-size:13px; } select { font:inherit; padding:3px 6px; border-radius:5px; border:1px solid var(--line); }
#map { position:relative; height:560px; border-radius:6px; overflow:hidden; background:#eef0f3; }
.tile { position:absolute; overflow:hidden; border:1px solid rgba(255,255,255,.85); cursor:pointer; padding:3px 5px;
        font-size:12px; line-height:1.25; transition:filter .1s; }
.tile:hover { filter:brightness(1.08); outline:2px solid #1f2a3c; outline-offset:-2px; z-index:2; }
.tile.sel { outline:3px solid #ff9f1c; outline-offset:-3px; z-index:3; }
.tile .nm { font-weight:650; white-space:nowrap; } .tile .sz { opacity:.8; margin-left:4px; font-weight:400; }
.tile .tm { opacity:.9; overflow-wrap:normal; word-break:normal; }
.tile .nm, .tile .tm { overflow:hidden; text-overflow:ellipsis; }
.tile.others { background:repeating-linear-gradient(45deg,#d8dce3,#d8dce3 6px,#e4e7ec 6px,#e4e7ec 12px) !important; color:#4a5263 !important; }
#legend { display:flex; align-items:center; gap:8px; margin-top:8px; font-size:12px; color:var(--muted); }
#legend .ramp { width:220px; height:10px; border-radius:3px; border:1px solid var(--line); }
#detail { padding:14px 16px; max-height:640px; overflow:auto; }
#detail h2 { margin:0 0 2px; font-size:19px; } #detail .where { color:var(--muted); font-size:13px; margin-bottom:10px; }
#detail .where a { color:var(--accent); cursor:pointer; }
#detail h3 { font-size:13px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); margin:16px 0 6px; }
#detail h3 small { text-transform:none; letter-spacing:0; font-weight:400; }
.stats { display:grid; grid-template-columns:repeat(auto-fill,minmax(128px,1fr)); gap:8px; }
.stat { background:#f3f5f8; border-radius:7px; padding:6px 9px; } .stat .k { color:var(--muted); font-size:11.5px; }
.stat .v { font-size:16px; font-weight:600; font-variant-numeric:tabular-nums; }
.chips { display:flex; flex-wrap:wrap; gap:5px; }
.chip { border:1px solid #cbd6ea; background:#eef3fb; color:#21457e; border-radius:999px; padding:2px 9px; font-size:12.5px; cursor:pointer; }
.chip:hover { background:#dde8fa; }
ol.samples { margin:0; padding-left:20px; } ol.samples li { margin:0 0 6px; } .muted { color:var(--muted); }
table.kids { width:100%; border-collapse:collapse; font-size:13px; }
table.kids th { text-align:left; color:var(--muted); font-weight:500; border-bottom:1px solid var(--line); padding:3px 4px; }
table.kids td { border-bottom:1px solid #f0f2f5; padding:4px; vertical-align:top; } table.kids td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
table.kids tr.kid { cursor:pointer; } table.kids tr.kid:hover { background:#f1f6ff; } table.kids tr.others td { color:var(--muted); font-style:italic; }
.sw { display:inline-block; width:10px; height:10px; border-radius:2px; margin-right:5px; vertical-align:-1px; }
#dist { margin:14px 18px; padding:10px 14px 12px; } #dist h2 { font-size:15px; margin:2px 0 8px; }
#hists { display:grid; grid-template-columns:repeat(auto-fit,minmax(300px,1fr)); gap:16px; }
.hist .cap { font-size:12.5px; color:var(--muted); margin-bottom:2px; } .hist .cap b { color:var(--ink); }
.hist svg text { font-size:10px; fill:#5d6677; }
footer { margin:0 18px 18px; color:var(--muted); font-size:12px; }
</style>
</head>
<body>
<header>
  <div class="brand"><b>hermes</b> explore</div>
  <div id="summary"></div>
  <div class="search">
    <input id="search" type="search" placeholder="Search buckets by term or id (e.g. sdk, 74.213)" autocomplete="off" aria-label="Search buckets">
    <div id="results" hidden></div>
  </div>
</header>
<main>
  <section id="left" class="card">
    <div class="bar"><nav id="crumbs" aria-label="path"></nav>
      <label>Colour <select id="colour"></select></label></div>
    <div id="map" role="list"></div>
    <div id="legend"></div>
  </section>
  <aside id="detail" class="card" aria-live="polite"></aside>
</main>
<section id="dist" class="card"><h2>Bucket sizes per depth <span class="muted" style="font-weight:400">(documents per occupied bucket, all buckets)</span></h2><div id="hists"></div></section>
<footer id="foot"></footer>
<script type="application/json" id="hermes-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("hermes-data").textContent);
const NODES = DATA.nodes, TEXTS = DATA.texts;
NODES.forEach((nd, i) => { nd.i = i; (nd.ch || []).forEach(c => { NODES[c].p = i; }); });
const $ = id => document.getElementById(id);
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = n => Math.round(n).toLocaleString("en-US");
const pct = x => !isFinite(x) ? "-" : (100 * x).toFixed(x < 0.001 ? 3 : x < 0.1 ? 2 : 1) + "%";
const name = nd => nd.d === 0 ? "All documents" : DATA.names[nd.d - 1] + " " + nd.id;
const terms = nd => nd.t ? nd.t.split(" ") : [];
let cur = 0, sel = 0;

// ------------------------------------------------------------------ colour
const MODES = [["share", "Documents (share of parent)"]];
if (DATA.has_cos) MODES.push(["cos", "Centroid cosine"]);
if (DATA.plan) { MODES.push(["w", "Plan: mass P (L1: stage-1 weight)"]); MODES.push(["ratio", "Plan: drawn / target"]); }
const colourSel = $("colour");
MODES.forEach(([k, label]) => { const o = document.createElement("option"); o.value = k; o.textContent = label; colourSel.appendChild(o); });
if (DATA.plan) colourSel.value = "w";
function mix(a, b, t) { return a.map((v, j) => Math.round(v + (b[j] - v) * t)); }
function ramp(stops, t) {
  t = Math.max(0, Math.min(1, t)); const k = Math.min(stops.length - 2, Math.floor(t * (stops.length - 1)));
  return mix(stops[k], stops[k + 1], t * (stops.length - 1) - k);
}
const BLUES = [[232, 240, 251], [148, 190, 232], [52, 120, 198], [22, 62, 128]];
const TEALS = [[236, 246, 240], [150, 212, 186], [42, 150, 140], [19, 82, 96]];
const ORANGES = [[253, 243, 226], [250, 196, 120], [226, 120, 40], [150, 62, 16]];
const DIVERGE = [[196, 52, 52], [240, 160, 140], [246, 246, 246], [140, 180, 230], [36, 96, 180]];
function rgb(c) { return "rgb(" + c.join(",") + ")"; }
function ink(c) { return (0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]) > 150 ? "#1d2330" : "#ffffff"; }
function value(nd, mode, parent) {
  if (mode === "share") return nd.n / parent.n;
  if (mode === "cos") return nd.c;
  if (mode === "w") return nd.w;
  if (mode === "ratio") return (nd.tg === undefined) ? undefined : (nd.tg > 0 ? nd.dr / nd.tg : (nd.dr > 0 ? Infinity : null));
}
function scaleFor(items, mode, parent) {
  const vs = items.map(nd => value(nd, mode, parent)).filter(v => v !== undefined && v !== null && isFinite(v));
  let lo = Math.min(...vs), hi = Math.max(...vs);
  if (!vs.length) { lo = 0; hi = 1; }
  if (mode === "ratio") return {colour: v => ramp(DIVERGE, (Math.log2(Math.max(1e-3, v)) + 1) / 2), lo: 0.5, hi: 2,
    stops: DIVERGE, labels: ["drawn = \u00bd target", "= target", "2 \u00d7 target"]};
  const log = mode === "share" || mode === "w";
  const f = v => log ? Math.log(Math.max(v, 1e-12)) : v;
  const a = f(lo), b = f(hi);
  const stops = mode === "cos" ? TEALS : mode === "w" ? ORANGES : BLUES;
  const show = v => mode === "share" ? pct(v) : mode === "w" ? v.toPrecision(2) : v.toFixed(3);
  return {colour: v => ramp(stops, b > a ? (f(v) - a) / (b - a) : 0.6), lo, hi, stops, labels: [show(lo), "", show(hi)]};
}
function legend(sc, mode) {
  const g = "linear-gradient(90deg," + sc.stops.map(rgb).join(",") + ")";
  const what = MODES.find(m => m[0] === mode)[1] + (mode === "share" || mode === "w" ? " (log scale, among the buckets shown)" : "");
  let extra = "";
  if (mode === "ratio" || mode === "w" || mode === "cos") extra = ' <span class="sw" style="background:#d0d4db"></span>no value';
  $("legend").innerHTML = "<span>" + esc(sc.labels[0]) + '</span><span class="ramp" style="background:' + g + '"></span><span>' +
    esc(sc.labels[2]) + "</span><span>" + esc(what) + extra + "</span>";
}

// ------------------------------------------------------------------ treemap (squarified)
function worst(row, side) {
  let sum = 0, mx = 0, mn = Infinity;
  for (const r of row) { sum += r.area; mx = Math.max(mx, r.area); mn = Math.min(mn, r.area); }
  const s2 = side * side, q = sum * sum; return Math.max(s2 * mx / q, q / (s2 * mn));
}
function squarify(items, W, H) {
  const total = items.reduce((s, a) => s + a.v, 0), out = [];
  if (!total) return out;
  let x = 0, y = 0, w = W, h = H, row = [];
  const rest = items.map(a => ({a, area: a.v * W * H / total}));
  const place = () => {
    const sum = row.reduce((s, r) => s + r.area, 0);
    if (w >= h) { const cw = sum / h; let yy = y; for (const r of row) { const rh = r.area / cw; out.push({a: r.a, x, y: yy, w: cw, h: rh}); yy += rh; } x += cw; w -= cw; }
    else { const rh = sum / w; let xx = x; for (const r of row) { const rw = r.area / rh; out.push({a: r.a, x: xx, y, w: rw, h: rh}); xx += rw; } y += rh; h -= rh; }
    row = [];
  };
  let i = 0;
  while (i < rest.length) {
    const side = Math.min(w, h), c = rest[i];
    if (!row.length || worst(row.concat([c]), side) <= worst(row, side)) { row.push(c); i++; } else place();
  }
  if (row.length) place();
  return out;
}
function drawMap() {
  const node = NODES[cur], map = $("map"), mode = colourSel.value;
  const kids = (node.ch || []).map(i => NODES[i]).sort((a, b) => b.n - a.n || (a.id < b.id ? -1 : 1));
  const sc = scaleFor(kids, mode, node);
  legend(sc, mode);
  const items = kids.map(nd => ({v: nd.n, nd}));
  if (node.o) items.push({v: node.o.n, others: node.o});
  const W = map.clientWidth, H = map.clientHeight;
  const frag = document.createDocumentFragment();
  for (const r of squarify(items, W, H)) {
    const el = document.createElement("div");
    el.className = "tile"; el.setAttribute("role", "listitem"); el.tabIndex = 0;
    el.style.left = r.x + "px"; el.style.top = r.y + "px"; el.style.width = Math.max(0, r.w) + "px"; el.style.height = Math.max(0, r.h) + "px";
    if (r.a.others) {
      const o = r.a.others; el.classList.add("others"); el.dataset.id = "others";
      el.title = "others: " + fmt(o.b) + " smaller buckets, " + fmt(o.n) + " documents";
      if (r.w > 46 && r.h > 18) el.innerHTML = '<div class="nm">others <span class="sz">' + fmt(o.b) + " buckets</span></div>" +
        (r.h > 34 ? '<div class="tm">' + fmt(o.n) + " docs</div>" : "");
      el.onclick = () => showOthers(node);
    } else {
      const nd = r.a.nd, v = value(nd, mode, node);
      const c = (v === undefined || v === null || !isFinite(v) && mode !== "ratio") ? [208, 212, 219] : sc.colour(v === Infinity ? 4 : v);
      el.style.background = rgb(c); el.style.color = ink(c);
      el.dataset.id = nd.id; el.dataset.node = nd.i;
      if (nd.i === sel) el.classList.add("sel");
      el.title = name(nd) + "\n" + fmt(nd.n) + " documents (" + pct(nd.n / node.n) + " of " + name(node) + ")" + (nd.t ? "\n" + terms(nd).slice(0, 6).join(", ") : "");
      if (r.w > 34 && r.h > 16) {
        let h = '<div class="nm">' + esc(nd.id) + (r.w > 90 ? '<span class="sz">' + fmt(nd.n) + "</span>" : "") + "</div>";
        if (r.h > 32 && nd.t) h += '<div class="tm">' + esc(terms(nd).slice(0, Math.max(1, Math.floor(r.h / 15) - 1) * 2).join(" \u00b7 ")) + "</div>";
        el.innerHTML = h;
      }
      el.onclick = () => choose(nd.i);
      el.onkeydown = e => { if (e.key === "Enter") choose(nd.i); };
    }
    frag.appendChild(el);
  }
  map.replaceChildren(frag);
}

// ------------------------------------------------------------------ navigation
function ancestors(i) { const out = []; while (i !== undefined) { out.unshift(i); i = NODES[i].p; } return out; }
function choose(i) {
  const nd = NODES[i];
  sel = i;
  cur = (nd.ch && nd.ch.length) || nd.o ? i : (nd.p === undefined ? 0 : nd.p);
  render();
}
function render() {
  $("crumbs").innerHTML = ancestors(cur).map((i, k, all) => k === all.length - 1 ? "<b>" + esc(name(NODES[i])) + "</b>" :
    '<a data-go="' + i + '">' + esc(name(NODES[i])) + '</a><span class="sep">\u203a</span>').join("");
  drawMap(); drawDetail();
}
$("crumbs").onclick = e => { const a = e.target.closest("a[data-go]"); if (a) choose(+a.dataset.go); };
document.addEventListener("keydown", e => {
  if ((e.key === "Backspace" || e.key === "Escape") && document.activeElement !== $("search") && cur !== 0) { choose(NODES[cur].p); }
});
window.addEventListener("resize", () => drawMap());
colourSel.onchange = () => drawMap();

// ------------------------------------------------------------------ detail panel
function stat(k, v) { return '<div class="stat"><div class="k">' + esc(k) + '</div><div class="v">' + v + "</div></div>"; }
function l1Of(nd) { while (nd.d > 1) nd = NODES[nd.p]; return nd; }
function drawDetail() {
  const nd = NODES[sel], par = nd.p === undefined ? null : NODES[nd.p];
  let h = "<h2>" + esc(nd.d === 0 ? DATA.title : name(nd) + " bucket") + "</h2>";
  if (par) h += '<div class="where">in <a data-go="' + par.i + '">' + esc(name(par)) + "</a>" + (nd.d < DATA.levels.length ? " \u00b7 code prefix (" + esc(nd.id.split(".").join(", ")) + ")" : "") + "</div>";
  else h += '<div class="where">' + fmt(DATA.n) + " documents, levels " + DATA.levels.join(" \u00d7 ") + "</div>";
  h += '<div class="stats">' + stat("documents", fmt(nd.n));
  if (nd.d > 0) { h += stat("share of corpus", pct(nd.n / DATA.n)); h += stat("share of parent", pct(nd.n / par.n)); }
  const kidsName = DATA.names[nd.d] || "";
  if (nd.d === 0) DATA.occupied.forEach((o, j) => { h += stat(DATA.names[j] + " occupied", fmt(o) + ' <span class="muted" style="font-size:12px">/ ' + fmt(DATA.nominal[j]) + "</span>"); });
  else if (nd.d < DATA.levels.length) h += stat(kidsName + " children", fmt(nd.k || 0));
  if (nd.c !== undefined) h += stat("centroid cosine", nd.c.toFixed(3));
  if (DATA.plan && nd.d > 0) {
    if (nd.w !== undefined) { h += stat("plan mass P", nd.w.toPrecision(3)); h += stat("target / drawn", (nd.tg < 10 ? nd.tg.toFixed(2) : fmt(nd.tg)) + " / " + fmt(nd.dr)); }
    const l1 = l1Of(nd); if (l1.w !== undefined) h += stat("stage-1 weight (" + esc(name(l1)) + ")", l1.w.toPrecision(3));
  }
  h += "</div>";
  if (nd.t) h += "<h3>Distinctive terms <small>(class-TF-IDF of a sample of " + fmt(nd.m) + " texts against the corpus)</small></h3><div class=\"chips\">" +
    terms(nd).map(t => '<button class="chip" data-term="' + esc(t) + '">' + esc(t) + "</button>").join("") + "</div>";
  if (nd.s && nd.s.length) h += "<h3>Sample texts <small>(" + nd.s.length + " of a seeded uniform sample of " + fmt(nd.m) + ")</small></h3><ol class=\"samples\">" +
    nd.s.map(j => "<li>" + esc(TEXTS[j]) + "</li>").join("") + "</ol>";
  else if (nd.d > 0) h += '<h3>Sample texts</h3><div class="muted">none: no document of this bucket fell in its parent\u2019s sample of ' + (DATA.reservoir[DATA.reservoir.length - 1] || 0) + " texts</div>";
  if (nd.ch && nd.ch.length) {
    const kids = nd.ch.map(i => NODES[i]).sort((a, b) => b.n - a.n);
    const total = kids.length + (nd.o ? nd.o.b : 0);
    h += "<h3>Children <small>(" + (nd.o ? "the " + kids.length + " largest of " + fmt(total) : fmt(total)) + " " + esc(kidsName || "") + " buckets)</small></h3>";
    h += '<table class="kids"><tr><th>bucket</th><th class="num">docs</th><th class="num">share</th><th>terms</th></tr>';
    h += kids.map(k => '<tr class="kid" data-go="' + k.i + '" data-id="' + esc(k.id) + '"><td>' + esc(k.id) + '</td><td class="num">' + fmt(k.n) +
      '</td><td class="num">' + pct(k.n / nd.n) + "</td><td>" + esc(terms(k).slice(0, 4).join(", ")) + "</td></tr>").join("");
    if (nd.o) h += '<tr class="others"><td>others</td><td class="num">' + fmt(nd.o.n) + '</td><td class="num">' + pct(nd.o.n / nd.n) + "</td><td>" + fmt(nd.o.b) + " smaller buckets</td></tr>";
    h += "</table>";
  }
  $("detail").innerHTML = h;
}
function showOthers(node) {
  const o = node.o;
  let h = "<h2>others in " + esc(name(node)) + "</h2><div class=\"where\">the " + fmt(o.b) + " smaller " + esc(DATA.names[node.d] || "") +
    " buckets not drawn (the page keeps at most " + node.ch.length + " children per bucket)</div><div class=\"stats\">" +
    stat("buckets", fmt(o.b)) + stat("documents", fmt(o.n)) + stat("share of parent", pct(o.n / node.n));
  if (o.tg !== undefined) h += stat("plan mass P", o.w.toPrecision(3)) + stat("target / drawn", o.tg.toFixed(1) + " / " + fmt(o.dr));
  $("detail").innerHTML = h + "</div>";
}
$("detail").onclick = e => {
  const go = e.target.closest("[data-go]"); if (go) { choose(+go.dataset.go); return; }
  const chip = e.target.closest(".chip"); if (chip) { $("search").value = chip.dataset.term; search(); $("search").focus(); }
};

// ------------------------------------------------------------------ search
const INDEX = NODES.map(nd => terms(nd));
let hits = [], active = 0;
function search() {
  const q = $("search").value.trim().toLowerCase(), box = $("results");
  if (!q) { box.hidden = true; return; }
  hits = [];
  if (/^[0-9]+(\.[0-9]+)*\.?$/.test(q)) {
    const p = q.replace(/\.$/, "");
    NODES.forEach(nd => { if (nd.d > 0 && (nd.id === p || nd.id.startsWith(p + "."))) hits.push({nd, r: nd.id === p ? 0 : nd.d, t: -1}); });
  } else {
    const words = q.split(/\s+/);
    NODES.forEach((nd, i) => {
      let score = 0, first = -1;
      for (const w of words) {
        const k = INDEX[i].findIndex(t => t === w), kp = k >= 0 ? k : INDEX[i].findIndex(t => t.startsWith(w));
        if (kp < 0) return;
        score += (k >= 0 ? 0 : 10) + kp; if (first < 0) first = kp;
      }
      hits.push({nd, r: score, t: first});
    });
  }
  hits.sort((a, b) => a.r - b.r || a.nd.d - b.nd.d || b.nd.n - a.nd.n);
  const n = hits.length; hits = hits.slice(0, 50); active = 0;
  const words = q.split(/\s+/);
  const hl = t => words.some(w => t.startsWith(w)) ? "<mark>" + esc(t) + "</mark>" : esc(t);
  box.innerHTML = hits.length ? hits.map((h, k) => '<div class="hit' + (k === 0 ? " active" : "") + '" data-k="' + k + '" data-id="' + esc(h.nd.id) + '"><span class="nm">' +
    esc(name(h.nd)) + '</span><span class="sz">' + fmt(h.nd.n) + " docs</span><div class=\"tm\">" + terms(h.nd).slice(0, 8).map(hl).join(" \u00b7 ") + "</div></div>").join("") +
    (n > hits.length ? '<div class="none">' + fmt(n - hits.length) + " more; refine the search</div>" : "")
    : '<div class="none">no bucket shows the term \u201c' + esc(q) + "\u201d</div>";
  box.hidden = false;
}
$("search").addEventListener("input", search);
$("search").addEventListener("keydown", e => {
  if (e.key === "Enter" && hits.length) { pick(active); }
  else if (e.key === "Escape") { $("search").value = ""; $("results").hidden = true; }
  else if (e.key === "ArrowDown" || e.key === "ArrowUp") {
    e.preventDefault(); active = Math.max(0, Math.min(hits.length - 1, active + (e.key === "ArrowDown" ? 1 : -1)));
    document.querySelectorAll("#results .hit").forEach((el, k) => el.classList.toggle("active", k === active));
  }
});
$("results").onclick = e => { const h = e.target.closest(".hit"); if (h) pick(+h.dataset.k); };
document.addEventListener("click", e => { if (!e.target.closest(".search")) $("results").hidden = true; });
function pick(k) { $("results").hidden = true; choose(hits[k].nd.i); }

// ------------------------------------------------------------------ size distribution per depth
function drawHists() {
  const W = 360, H = 156, padL = 34, padB = 30, padT = 16;
  $("hists").innerHTML = DATA.hist.map((hg, j) => {
    const cnt = hg.counts, nb = cnt.length, bw = (W - padL - 6) / nb, mx = Math.max(1, ...cnt);
    const y = c => c > 0 ? (H - padB) - (H - padB - padT) * Math.log10(c + 1) / Math.log10(mx + 1) : H - padB;
    let s = '<svg viewBox="0 0 ' + W + " " + H + '" width="100%" role="img" aria-label="' + DATA.names[j] + ' size distribution">';
    s += '<line x1="' + padL + '" y1="' + (H - padB) + '" x2="' + (W - 4) + '" y2="' + (H - padB) + '" stroke="#b9c0cc"/>';
    cnt.forEach((c, k) => {
      const x = padL + k * bw, yy = y(c), lo = hg.edges[k], hi = hg.edges[k + 1] - 1;
      s += '<rect x="' + (x + 1) + '" y="' + yy + '" width="' + Math.max(1, bw - 2) + '" height="' + (H - padB - yy) + '" fill="' + rgb(BLUES[2]) + '" rx="1.5"><title>' +
        (lo === hi ? lo : lo + "\u2013" + hi) + " documents: " + fmt(c) + " buckets</title></rect>";
      if (c > 0 && bw > 16) s += '<text x="' + (x + bw / 2) + '" y="' + (yy - 2) + '" text-anchor="middle">' + (c >= 10000 ? Math.round(c / 1000) + "k" : c) + "</text>";
      if (nb <= 12 || k % Math.ceil(nb / 12) === 0) s += '<text x="' + (x + bw / 2) + '" y="' + (H - padB + 12) + '" text-anchor="middle">' + (lo >= 1024 ? Math.round(lo / 1024) + "k" : lo) + "</text>";
    });
    s += '<text x="' + ((W + padL) / 2) + '" y="' + (H - 4) + '" text-anchor="middle">documents per bucket (from; log\u2082 bins)</text>';
    s += '<text x="10" y="' + ((H - padB) / 2) + '" transform="rotate(-90 10 ' + ((H - padB) / 2) + ')" text-anchor="middle">buckets (log)</text></svg>';
    const q = hg.q;
    return '<div class="hist"><div class="cap"><b>' + DATA.names[j] + "</b>: " + fmt(DATA.occupied[j]) + " of " + fmt(DATA.nominal[j]) +
      " occupied (" + pct(DATA.occupied[j] / DATA.nominal[j]) + ")" + (q.max !== undefined ? "; median " + (+q.median.toFixed(1)) + ", mean " + q.mean.toFixed(2) + ", max " + fmt(q.max) : "") +
      "</div>" + s + "</div>";
  }).join("");
}

// ------------------------------------------------------------------ start
$("summary").textContent = fmt(DATA.n) + " documents \u00b7 levels " + DATA.levels.join(" \u00d7 ") + " \u00b7 " +
  DATA.names.slice(0, DATA.depth).map((nm, j) => fmt(DATA.occupied[j]) + " " + nm).join(", ") + " buckets" +
  (DATA.plan ? " \u00b7 plan: depth " + DATA.plan.depth + (DATA.plan.stage1 !== undefined ? ", stage1 " + DATA.plan.stage1 + ", stage2 " + DATA.plan.stage2 : "") : "");
$("foot").innerHTML = "Made by hermes explore (seed " + DATA.seed + "). Samples: a seeded uniform sample per bucket (" +
  DATA.reservoir.map((r, j) => r + " texts per " + DATA.names[j]).join(", ") + "; deeper buckets from their parent\u2019s). Texts: " +
  esc(DATA.sources.texts.join(", ")) + ". Labels: " + esc(DATA.sources.labels.length) + " file(s)" +
  (DATA.sources.plan ? ". Plan: " + esc(DATA.sources.plan) : "") + (DATA.notes.length ? ". Notes: " + esc(DATA.notes.join("; ")) : "") + ".";
drawHists();
render();
</script>
</body>
</html>
"""
