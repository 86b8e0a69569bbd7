"""The explorer page's script (vanilla JavaScript), inserted by `vaelab.serve.page` into its <script> element.

A Python string, as the page is. It talks to the JSON API under /api/ with `fetch`; the ids it drives are
listed in `vaelab.serve.page`.
"""

from __future__ import annotations

SCRIPT = """"use strict";
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
    setVerdict.textContent = `As a set of ${v.n} images: ${v.verdict} (mean -log p ` +
      `${fmt(v.mean_evidence, 2)} and mean percentile ${fmt(v.mean_percentile, 1)} of their DoSE scores; ` +
      `-log of the smaller p-value ${fmt(v.statistic, 2)}, threshold ${fmt(v.threshold, 2)}; ` +
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
"""
