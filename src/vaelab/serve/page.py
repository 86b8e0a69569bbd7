"""The latent explorer's single web page (HTML and CSS; its JavaScript is `vaelab.serve.script`), served
by `vaelab.serve.http`.

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

from vaelab.serve.script import SCRIPT

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
""" + SCRIPT + """</script>
</body>
</html>
"""
