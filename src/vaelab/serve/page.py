"""The latent explorer's single web page (HTML, CSS and vanilla JavaScript), served by `vaelab.serve.http`.

A Python string, so it ships inside the package with no package-data configuration. No external
resources: no CDN, no fonts, no frameworks; it talks to the JSON API under /api/ with `fetch`. Every
control and image has a stable id (the browser test drives them):

    samples:        #temperature  #seed  #resample  #samples > img#sample-0 ...
    interpolation:  #thumbs > img#thumb-<index>  #pick-a  #pick-b  #t  #method  #interp  #interp-path
    traversal:      #dim  #base  #value  #traverse  #traverse-path
    upload:         #upload (file input)  #resize  #upload-input  #upload-scored  #upload-recon
                    #nll  #bpd  #nll-pct  #ood  #ood-pct  #recon-err  #verdict  #upload-error
    several files:  #set-result > #set-thumbs > img#set-<i>  #set-verdict   (the details show the first file)
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vaelab latent explorer</title>
<style>
  :root { --cell: 72px; --fg: #1d2430; --muted: #5d6878; --line: #d9dee6; --accent: #2f6fdf; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         background: #f5f7fa; }
  header { padding: 14px 22px; background: #fff; border-bottom: 1px solid var(--line); }
  h1 { font-size: 19px; margin: 0; }
  h2 { font-size: 15px; margin: 0 0 10px; }
  #run-info { color: var(--muted); margin: 2px 0 0; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 16px; padding: 16px 22px; }
  section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
  .controls { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center; margin-bottom: 10px; }
  .controls label { display: flex; gap: 6px; align-items: center; }
  input[type=range] { width: 190px; }
  input[type=number] { width: 90px; }
  output { font-variant-numeric: tabular-nums; min-width: 3.2em; display: inline-block; }
  button { font: inherit; padding: 4px 12px; border: 1px solid var(--accent); border-radius: 5px;
           background: var(--accent); color: #fff; cursor: pointer; }
  img.px { image-rendering: pixelated; width: var(--cell); height: auto; background: #000;
           border: 1px solid var(--line); display: block; }
  img.px:not([src]) { aspect-ratio: 1 / 1; visibility: hidden; }  /* room kept, nothing shown until filled */
  .grid { display: grid; grid-template-columns: repeat(auto-fill, var(--cell)); gap: 4px; }
  .strip { display: flex; flex-wrap: wrap; gap: 3px; margin-top: 8px; }
  .strip img.px { width: calc(var(--cell) * 0.66); }
  .thumbs { display: flex; flex-wrap: wrap; gap: 3px; max-height: 178px; overflow-y: auto; margin-bottom: 10px; }
  .thumbs img.px { width: 40px; cursor: pointer; }
  .thumbs img.px.a { outline: 3px solid #e0662f; outline-offset: -3px; }
  .thumbs img.px.b { outline: 3px solid #2f9d5f; outline-offset: -3px; }
  .row { display: flex; gap: 16px; align-items: flex-end; flex-wrap: wrap; }
  figure { margin: 0; text-align: center; color: var(--muted); font-size: 12px; }
  figure img.px { width: calc(var(--cell) * 1.5); }
  .hint { color: var(--muted); margin: 0 0 8px; }
  table { border-collapse: collapse; margin-top: 10px; }
  td { padding: 2px 10px 2px 0; vertical-align: top; }
  td:first-child { color: var(--muted); }
  #verdict { font-weight: 600; margin: 10px 0 0; }
  #verdict.unusual { color: #b4361c; }
  #verdict.typical { color: #1f7a45; }
  #set-verdict { font-weight: 600; margin: 8px 0 0; }
  #set-verdict.unusual { color: #b4361c; }
  #set-verdict.typical { color: #1f7a45; }
  #set-thumbs img.px.unusual { outline: 3px solid #b4361c; outline-offset: -3px; }
  .error { color: #b4361c; min-height: 1.2em; margin: 6px 0 0; }
  #error { margin: 10px 22px 0; padding: 8px 12px; background: #fdecea; border: 1px solid #f3b8ae; border-radius: 6px; }
</style>
</head>
<body>
<header>
  <h1>vaelab latent explorer</h1>
  <p id="run-info">loading the model&hellip;</p>
</header>
<div id="error" class="error" role="alert" hidden></div>
<main>
  <section id="panel-samples">
    <h2>Samples from the prior</h2>
    <div class="controls">
      <label>temperature <input type="range" id="temperature" min="0.1" max="2" step="0.05" value="1">
        <output id="temperature-value">1.00</output></label>
      <label>seed <input type="number" id="seed" min="0" value="0"></label>
      <button id="resample" type="button">resample</button>
    </div>
    <div id="samples" class="grid"></div>
  </section>

  <section id="panel-interp">
    <h2>Between two test images</h2>
    <p class="hint">Click a thumbnail to set A (orange), the next click sets B (green).</p>
    <div id="thumbs" class="thumbs"></div>
    <div class="controls">
      <label>t <input type="range" id="t" min="0" max="1" step="0.01" value="0.5">
        <output id="t-value">0.50</output></label>
      <label>path <select id="method"><option value="slerp">slerp</option>
        <option value="lerp">lerp</option></select></label>
    </div>
    <div class="row">
      <figure><img id="pick-a" class="px" alt="image A"><figcaption id="pick-a-label">A</figcaption></figure>
      <figure><img id="interp" class="px" alt="decoded point between A and B"><figcaption>between</figcaption></figure>
      <figure><img id="pick-b" class="px" alt="image B"><figcaption id="pick-b-label">B</figcaption></figure>
    </div>
    <div id="interp-path" class="strip"></div>
  </section>

  <section id="panel-traverse">
    <h2>Along one latent dimension</h2>
    <div class="controls">
      <label>dimension <select id="dim"></select></label>
      <label>start from <select id="base"><option value="zero">the prior's centre</option>
        <option value="a">image A's code</option></select></label>
      <label>value <input type="range" id="value" min="-4" max="4" step="0.1" value="0">
        <output id="value-out">0.0</output></label>
    </div>
    <div class="row">
      <figure><img id="traverse" class="px" alt="decoded code"><figcaption id="traverse-label"></figcaption></figure>
    </div>
    <div id="traverse-path" class="strip"></div>
    <p class="hint">Values are in <span id="traverse-units">prior standard deviations</span>; dimensions are listed most active first
      (activity: the variance of the training images' codes along it; near 0, the decoder ignores it).</p>
  </section>

  <section id="panel-upload">
    <h2>Your image</h2>
    <div class="controls">
      <input type="file" id="upload" accept="image/*" multiple
             title="one image, or several judged one by one and as a set">
      <label><input type="checkbox" id="resize" checked> resize to fit <span id="size-hint"></span></label>
    </div>
    <div class="row">
      <figure><img id="upload-input" class="px" alt="uploaded image"><figcaption>your image</figcaption></figure>
      <figure><img id="upload-scored" class="px" alt="image as scored">
        <figcaption id="scored-label">as scored</figcaption></figure>
      <figure><img id="upload-recon" class="px" alt="reconstruction"><figcaption>reconstruction</figcaption></figure>
    </div>
    <table id="upload-result">
      <tr><td>NLL</td><td id="nll">&ndash;</td></tr>
      <tr><td>bits/dim</td><td id="bpd">&ndash;</td></tr>
      <tr><td>NLL among in-distribution images</td><td id="nll-pct">&ndash;</td></tr>
      <tr><td>OOD score (NLL bits &minus; PNG bits)</td><td id="ood">&ndash;</td></tr>
      <tr><td>OOD score among in-distribution images</td><td id="ood-pct">&ndash;</td></tr>
      <tr><td>reconstruction error</td><td id="recon-err">&ndash;</td></tr>
      <tr><td>DoSE score (the default OOD score)</td><td id="dose">&ndash;</td></tr>
      <tr><td>DoSE score among validation images</td><td id="dose-pct">&ndash;</td></tr>
    </table>
    <p id="verdict"></p>
    <p id="upload-error" class="error"></p>
    <div id="set-result" hidden>
      <h2>Your images as a set</h2>
      <p class="hint">Each image outlined in red is flagged on its own; the set is judged by the DoSE batch test
        (the mean -log tail p-value of their DoSE scores among validation images' scores, against the same mean
        for as many validation images). For 10 or more images from one source,
        trust the set's verdict: single images close to the training data often pass.</p>
      <div id="set-thumbs" class="strip"></div>
      <p id="set-verdict"></p>
    </div>
  </section>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = { info: null, a: null, b: null, next: "a", thumbs: new Map() };

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || ("HTTP " + response.status));
  return body;
}

function showError(err) {
  const box = $("error");
  box.textContent = err ? String(err.message || err) : "";
  box.hidden = !err;
}

// Run `task` now, or once more after the one in flight: a dragged slider sends one request at a time
// and the last position always gets its answer.
function coalesced(task) {
  let busy = false, again = false;
  return async function trigger() {
    if (busy) { again = true; return; }
    busy = true;
    try {
      do { again = false; await task(); } while (again);
      showError(null);
    } catch (err) {
      showError(err);
    } finally {
      busy = false;
    }
  };
}

function pixelImage(src, id, title) {
  const img = document.createElement("img");
  img.className = "px";
  img.src = src;
  if (id) img.id = id;
  if (title) img.title = title;
  return img;
}

function fillStrip(box, images, titles) {
  box.replaceChildren(...images.map((src, i) => pixelImage(src, null, titles[i])));
}

// ------------------------------------------------------------------ samples
const loadSamples = coalesced(async () => {
  const temperature = Number($("temperature").value);
  const seed = Math.max(0, Math.floor(Number($("seed").value) || 0));
  const data = await api(`/api/samples?n=16&temperature=${temperature}&seed=${seed}`);
  const box = $("samples");
  if (box.children.length !== data.images.length) {
    box.replaceChildren(...data.images.map((src, i) => pixelImage(src, "sample-" + i)));
  } else {
    data.images.forEach((src, i) => { box.children[i].src = src; });
  }
});

// ------------------------------------------------------------------ interpolation
function markPicks() {
  for (const [index, img] of state.thumbs) {
    img.classList.toggle("a", index === state.a);
    img.classList.toggle("b", index === state.b);
  }
  for (const side of ["a", "b"]) {
    const img = state.thumbs.get(state[side]);
    if (img) {
      $("pick-" + side).src = img.src;
      $("pick-" + side + "-label").textContent = `${side.toUpperCase()}: #${state[side]} (${img.dataset.label})`;
    }
  }
}

const loadPoint = coalesced(async () => {
  if (state.a === null || state.b === null) return;
  const t = Number($("t").value), method = $("method").value;
  const data = await api(`/api/interpolate?a=${state.a}&b=${state.b}&t=${t}&method=${method}`);
  $("interp").src = data.image;
});

const loadPath = coalesced(async () => {
  if (state.a === null || state.b === null) return;
  const data = await api(`/api/interpolate?a=${state.a}&b=${state.b}&steps=9&method=${$("method").value}`);
  fillStrip($("interp-path"), data.images, data.t.map((t) => "t = " + t.toFixed(2)));
});

function pick(index) {
  state[state.next] = index;
  state.next = state.next === "a" ? "b" : "a";
  markPicks();
  loadPoint(); loadPath();
  if ($("base").value === "a") { loadTraverse(); loadTraversePath(); }
}

async function loadThumbs() {
  const data = await api("/api/test-images?offset=0&n=60");
  const box = $("thumbs");
  box.replaceChildren();
  state.thumbs.clear();
  for (const item of data.images) {
    const img = pixelImage(item.image, "thumb-" + item.index, `#${item.index}: ${item.label}`);
    img.dataset.index = item.index;
    img.dataset.label = item.label;
    img.addEventListener("click", () => pick(item.index));
    box.appendChild(img);
    state.thumbs.set(item.index, img);
  }
  if (data.images.length >= 2) {
    state.a = data.images[0].index; state.b = data.images[1].index; state.next = "a";
    markPicks();
  }
}

// ------------------------------------------------------------------ traversal
function traverseQuery() {
  const base = $("base").value === "a" && state.a !== null ? state.a : "zero";
  return `dim=${$("dim").value}&base=${base}`;
}

const loadTraverse = coalesced(async () => {
  const value = Number($("value").value);
  const data = await api(`/api/traverse?${traverseQuery()}&value=${value}`);
  $("traverse").src = data.image;
  $("traverse-label").textContent = `z${data.dim} = ${value.toFixed(1)}`;
});

const loadTraversePath = coalesced(async () => {
  const data = await api(`/api/traverse?${traverseQuery()}&steps=9`);
  fillStrip($("traverse-path"), data.images, data.values.map((v) => "value " + v.toFixed(1)));
});

function fillDims(info) {
  const order = info.activity.map((a, d) => [a, d]).sort((x, y) => y[0] - x[0]);
  $("dim").replaceChildren(...order.map(([a, d]) => {
    const option = document.createElement("option");
    option.value = d;
    option.textContent = `z${d} (activity ${a.toFixed(2)})`;
    return option;
  }));
  $("traverse-units").textContent = info.traverse_units;
  const range = info.limits.traverse_range;
  $("value").min = -range; $("value").max = range;
}

// ------------------------------------------------------------------ upload
function fmt(x, digits) { return x === null || x === undefined ? "\\u2013" : Number(x).toFixed(digits); }

async function resizedPng(file, width, height) {
  const bitmap = await createImageBitmap(file);
  if (bitmap.width === width && bitmap.height === height) return file;
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, width, height);
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, width, height);
  return await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function scoreFile(file) {
  const [, h, w] = state.info.image_shape;
  let body = file;
  if ($("resize").checked) {
    try { body = await resizedPng(file, w, h); } catch (e) { body = file; }  // not an image: the server says so
  }
  return await api("/api/upload", { method: "POST", body: body,
                                    headers: { "Content-Type": body.type || "application/octet-stream" } });
}

function showUpload(r) {
  $("upload-input").src = r.input;
  $("upload-scored").src = r.scored;
  $("upload-recon").src = r.reconstruction;
  $("scored-label").textContent = r.binarized ? "as scored (binarized)" : "as scored";
  if (r.likelihood) {
    $("nll").textContent = `${fmt(r.nll, 2)} nats (k = ${r.k})`;
    $("bpd").textContent = fmt(r.bits_per_dim, 4);
    const val = r.nll_percentile_val !== undefined && r.nll_percentile_val !== null;
    $("nll-pct").textContent = val ? `${fmt(r.nll_percentile_val, 1)}th percentile of validation images`
                                   : `${fmt(r.nll_percentile_train, 1)}th percentile of training images`;
    $("ood").textContent = `${fmt(r.ood_score, 1)} bits (PNG ${fmt(r.png_bits, 0)} bits)`;
    $("ood-pct").textContent = val ? `${fmt(r.ood_percentile_val, 1)}th percentile of validation images`
                                   : `${fmt(r.ood_percentile_test, 1)}th percentile of test images`;
  } else {
    $("nll").textContent = r.note;
    for (const id of ["bpd", "nll-pct", "ood", "ood-pct"]) $(id).textContent = "\\u2013";
  }
  $("recon-err").textContent = r.recon_error_percentile_val !== null
    ? `${fmt(r.recon_error, 4)} (${fmt(r.recon_error_percentile_val, 1)}th percentile of validation images)`
    : `${fmt(r.recon_error, 4)} (${fmt(r.recon_error_percentile_train, 1)}th percentile of training images)`;
  const dosed = r.dose_score !== undefined && r.dose_score !== null;
  $("dose").textContent = dosed ? fmt(r.dose_score, 2) : (state.info.dose.note || "\\u2013");
  $("dose-pct").textContent = dosed ? `${fmt(r.dose_percentile_val, 1)}th percentile (held out of its fit)`
                                    : "\\u2013";
  const verdict = $("verdict");
  verdict.textContent = `${r.verdict}: ${r.verdict_reason}`;
  verdict.className = r.verdict === "unusual" ? "unusual" : "typical";
}

function setThumb(index, name, r) {
  const img = document.createElement("img");
  img.className = "px" + (r.verdict === "unusual" ? " unusual" : "");
  img.id = `set-${index}`;
  img.src = r.input;
  img.alt = name;
  const dose = r.dose_percentile_val !== undefined && r.dose_percentile_val !== null
    ? `, DoSE score at the ${fmt(r.dose_percentile_val, 1)}th percentile` : "";
  img.title = `${name}: ${r.verdict}${dose}`;
  $("set-thumbs").appendChild(img);
}

// One file: its numbers. Several: each is scored as one upload (the first one's numbers are shown, each gets
// a thumbnail, red when flagged), then their DoSE scores are judged as one set by the server (/api/set).
async function upload() {
  const files = Array.from($("upload").files);
  $("upload").value = "";  // the next choice replaces this one (and the same file may be chosen again)
  if (!files.length) return;
  const several = files.length > 1;
  const setVerdict = $("set-verdict");
  $("upload-error").textContent = "";
  if (several) {
    $("set-result").hidden = false;
    $("set-thumbs").replaceChildren();
    setVerdict.className = "";
    if (files.length > state.info.limits.max_set) {
      setVerdict.textContent = "";
      $("upload-error").textContent = `choose at most ${state.info.limits.max_set} images at once ` +
                                      `(you chose ${files.length})`;
      return;
    }
  }
  const scores = [], failed = [];
  let unusual = 0;
  for (const [i, file] of files.entries()) {
    if (several) setVerdict.textContent = `scoring image ${i + 1} of ${files.length} \\u2026`;
    try {
      const r = await scoreFile(file);
      if (i === 0) showUpload(r);
      if (several) setThumb(i, file.name, r);
      if (r.verdict === "unusual") unusual += 1;
      if (r.dose_score !== undefined && r.dose_score !== null) scores.push(r.dose_score);
    } catch (err) {
      failed.push(`${file.name}: ${err.message}`);
    }
  }
  if (failed.length) {
    $("upload-error").textContent = several ? `${failed.length} of ${files.length} not scored: ${failed.join("; ")}`
                                            : failed[0];
  }
  if (!several) return;
  if (!state.info.dose.available) {
    setVerdict.textContent = `no set verdict: ${state.info.dose.note || "this run has no DoSE score"}`;
    return;
  }
  if (!scores.length) { setVerdict.textContent = "no image could be scored"; return; }
  try {
    const v = await api("/api/set", { method: "POST", body: JSON.stringify({ scores: scores }),
                                      headers: { "Content-Type": "application/json" } });
    setVerdict.textContent = `As a set of ${v.n} images: ${v.verdict} (their DoSE scores' mean -log p ` +
      `${fmt(v.mean_evidence, 2)}, threshold ${fmt(v.threshold_evidence, 2)}; ` +
      `p = ${Number(v.p_value).toPrecision(2)}); ` +
      `${unusual} of ${files.length - failed.length} judged unusual one by one`;
    setVerdict.className = v.flagged ? "unusual" : "typical";
  } catch (err) {
    setVerdict.textContent = "";
    $("upload-error").textContent = err.message;
  }
}

// ------------------------------------------------------------------ start
async function start() {
  try {
    const info = await api("/api/info");
    state.info = info;
    const [c, h, w] = info.image_shape;
    $("run-info").textContent = `${info.run}: ${info.kind} (${info.arch}), ${info.dataset} ${c}x${h}x${w}, ` +
      `latent ${info.latent_dim}, epoch ${info.epoch}` +
      (info.likelihood ? `; uploads scored with k = ${info.k} importance samples` : "; no likelihood") +
      `; references: ${info.reference.train_images} training and ${info.reference.test_images} test images`;
    $("size-hint").textContent = `(${w}x${h})`;
    fillDims(info);
    await loadThumbs();
    await Promise.all([loadSamples(), loadPoint(), loadPath(), loadTraverse(), loadTraversePath()]);
  } catch (err) {
    showError(err);
  }
}

$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  loadSamples();
});
$("seed").addEventListener("change", loadSamples);
$("resample").addEventListener("click", () => {
  $("seed").value = Math.floor(Number($("seed").value) || 0) + 1;
  loadSamples();
});
$("t").addEventListener("input", () => { $("t-value").textContent = Number($("t").value).toFixed(2); loadPoint(); });
$("method").addEventListener("change", () => { loadPoint(); loadPath(); });
$("dim").addEventListener("change", () => { loadTraverse(); loadTraversePath(); });
$("base").addEventListener("change", () => { loadTraverse(); loadTraversePath(); });
$("value").addEventListener("input", () => {
  $("value-out").textContent = Number($("value").value).toFixed(1);
  loadTraverse();
});
$("upload").addEventListener("change", upload);
start();
</script>
</body>
</html>
"""
