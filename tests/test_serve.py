"""`vaelab serve`: the explorer app without HTTP, its HTTP server (limits, errors, load), the CLI, and the page
in headless Chromium. Tiny digits runs (8x8), trained once per module; servers on 127.0.0.1, port 0."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import load_config, load_run, train
from vaelab.cli import main
from vaelab.data import load_dataset
from vaelab.serve import (MAX_BODY, TYPICAL, UNUSUAL, UNUSUAL_PERCENTILE, ExplorerApp, ExplorerServer, RequestError,
                          decode_upload, make_server, percentile, serve)

DIGITS = ["data.dataset=digits", "data.val_size=100", "train.grid_every=0", "train.grid_size=4", "eval.nll_k=10",
          "eval.nll_images=20", "eval.gap_images=0"]
# an MLP VAE trained long enough (on statically binarized digits) that its latent dimensions carry information
VAE = [*DIGITS, "model.arch=mlp", "train.lr=3e-3", "data.binarize=static", "train.epochs=4", "train.batch_size=32"]
REFERENCE = 100


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs: a VAE, an autoencoder and a hierarchical VAE on digits."""
    root = tmp_path_factory.mktemp("serve")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_config(overrides=VAE), root / "vae", log=lambda m: None)
        train(load_config(overrides=[*DIGITS, "model.kind=ae", "model.arch=mlp", "train.epochs=3"]), root / "ae",
              log=lambda m: None)
        train(load_config(overrides=[*DIGITS, "model.kind=hvae", "model.hvae_latents=[4,4]",
                                     "model.hvae_channels=16", "train.epochs=1"]), root / "hvae", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    return {kind: root / kind for kind in ("vae", "ae", "hvae")}


@pytest.fixture(scope="module")
def splits(runs):
    return load_dataset(load_run(runs["vae"]).config.data)


@pytest.fixture(scope="module")
def server(runs, splits):
    """The VAE's explorer on 127.0.0.1, a free port, answering in a thread; its log lines in `server.lines`."""
    lines: list[str] = []
    srv = make_server(runs["vae"], "127.0.0.1", 0, checkpoint="last", reference_images=REFERENCE, log=lines.append)
    srv.lines = lines
    assert srv.app.run.meta["epoch"] == 4 and srv.app.splits.test.images.equal(splits.test.images)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


def _json(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    status, head, data = _request(srv, method, path, body, headers)
    assert head["Content-Type"] == "application/json", (status, data[:200])
    return status, json.loads(data)


def _pixels(uri: str) -> np.ndarray:
    """A PNG data URI as an array (H, W) or (H, W, 3), checking it is a real PNG."""
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    raw = base64.b64decode(uri[len(prefix):])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(raw)))


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _test_png(splits, index: int) -> bytes:
    return _png(splits.test.images[index, 0].numpy())


# --------------------------------------------------------------------------- endpoints


def test_samples_are_pngs_of_the_model_size_seeded_and_tempered(server):
    status, a = _json(server, "GET", "/api/samples?n=5&temperature=1&seed=3")
    assert status == 200 and len(a["images"]) == 5
    images = [_pixels(u) for u in a["images"]]
    assert all(x.shape == (8, 8) and x.dtype == np.uint8 for x in images)
    assert _json(server, "GET", "/api/samples?n=5&temperature=1&seed=3")[1]["images"] == a["images"]
    assert _json(server, "GET", "/api/samples?n=5&temperature=1&seed=4")[1]["images"] != a["images"]
    cold = [_pixels(u) for u in _json(server, "GET", "/api/samples?n=5&temperature=0.2&seed=3")[1]["images"]]
    assert any(not np.array_equal(x, y) for x, y in zip(images, cold))


def test_test_images_have_index_label_and_the_split_pixels(server, splits):
    status, data = _json(server, "GET", "/api/test-images?offset=10&n=5")
    assert status == 200 and data["total"] == len(splits.test)
    assert [row["index"] for row in data["images"]] == [10, 11, 12, 13, 14]
    for row in data["images"]:
        assert row["label"] == str(int(splits.test.labels[row["index"]]))
        assert np.array_equal(_pixels(row["image"]), splits.test.images[row["index"], 0].numpy())
    last = _json(server, "GET", f"/api/test-images?offset={len(splits.test) - 2}&n=40")[1]
    assert len(last["images"]) == 2  # the list stops at the end of the split


def test_interpolation_ends_are_the_reconstructions(server, splits):
    run = server.app.run
    recon = run.reconstruct(splits.test.images[[3, 7]].float() / 255)
    expected = [(recon[i, 0] * 255).round().to(torch.uint8).numpy().astype(int) for i in range(2)]
    for method in ("slerp", "lerp"):
        start = _pixels(_json(server, "GET", f"/api/interpolate?a=3&b=7&t=0&method={method}")[1]["image"])
        end = _pixels(_json(server, "GET", f"/api/interpolate?a=3&b=7&t=1&method={method}")[1]["image"])
        assert np.abs(start.astype(int) - expected[0]).max() <= 1
        assert np.abs(end.astype(int) - expected[1]).max() <= 1
    middle = _pixels(_json(server, "GET", "/api/interpolate?a=3&b=7&t=0.5")[1]["image"])
    assert not np.array_equal(middle, start) and not np.array_equal(middle, end)
    status, path = _json(server, "GET", "/api/interpolate?a=3&b=7&steps=5&method=lerp")
    assert status == 200 and len(path["images"]) == 5 and path["t"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert np.abs(_pixels(path["images"][0]).astype(int) - expected[0]).max() <= 1


def test_traversal_moves_the_image_along_a_dimension(server):
    info = _json(server, "GET", "/api/info")[1]
    dim = int(np.argmax(info["activity"]))
    low = _pixels(_json(server, "GET", f"/api/traverse?dim={dim}&value=-3")[1]["image"])
    high = _pixels(_json(server, "GET", f"/api/traverse?dim={dim}&value=3")[1]["image"])
    assert low.shape == (8, 8) and np.abs(low.astype(int) - high.astype(int)).max() > 20
    from_image = _pixels(_json(server, "GET", f"/api/traverse?dim={dim}&value=-3&base=5")[1]["image"])
    assert not np.array_equal(from_image, low)  # the other dimensions come from test image 5's code
    status, row = _json(server, "GET", f"/api/traverse?dim={dim}&steps=5&base=zero")
    assert status == 200 and row["values"] == [-4.0, -2.0, 0.0, 2.0, 4.0] and len(row["images"]) == 5


def test_info_describes_the_model_and_the_references(server):
    info = _json(server, "GET", "/api/info")[1]
    assert info["kind"] == "vae" and info["image_shape"] == [1, 8, 8] and info["latent_dim"] == 20
    assert info["likelihood"] and info["k"] == 100 and len(info["activity"]) == 20
    assert info["reference"]["train_images"] == REFERENCE and info["reference"]["test_images"] == REFERENCE
    assert info["reference"]["train_nll"]["p5"] < info["reference"]["train_nll"]["median"]


def test_page_is_served_with_its_controls(server):
    status, head, body = _request(server, "GET", "/")
    assert status == 200 and head["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in head["Content-Security-Policy"]
    page = body.decode()
    for element in ('id="temperature"', 'id="resample"', 'id="thumbs"', 'id="t"', 'id="dim"', 'id="value"',
                    'id="upload"', 'id="resize"', 'id="verdict"'):
        assert element in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere
    status, head, body = _request(server, "HEAD", "/api/info")
    assert status == 200 and body == b"" and int(head["Content-Length"]) > 100


# --------------------------------------------------------------------------- uploads


def test_upload_of_a_test_image_is_typical_and_noise_is_unusual(server, splits):
    pcts, oods, nlls = [], [], []
    for index in range(0, 60, 6):
        status, r = _json(server, "POST", "/api/upload", _test_png(splits, index), {"Content-Type": "image/png"})
        assert status == 200 and r["k"] == 100 and r["binarized"]
        assert set(np.unique(_pixels(r["scored"]))) <= {0, 255}
        assert np.array_equal(_pixels(r["input"]), splits.test.images[index, 0].numpy())
        assert _pixels(r["reconstruction"]).shape == (8, 8)
        assert r["bits_per_dim"] == pytest.approx(r["nll"] / (64 * np.log(2)))
        pcts.append(r["nll_percentile_train"])
        oods.append(r["ood_score"])
        nlls.append(r["nll"])
        assert 0 <= r["ood_percentile_test"] <= 100
    assert 10 < statistics.median(pcts) < 95  # test images fall inside the training NLLs
    noise = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    r = _json(server, "POST", "/api/upload", _png(noise))[1]
    assert r["nll"] > max(nlls) and r["ood_score"] > max(oods)
    assert r["nll_percentile_train"] == 100 and r["ood_percentile_test"] == 100
    assert r["verdict"] == UNUSUAL and "validation images" in r["verdict_reason"]
    assert [c["measure"] for c in r["checks"]][0] == "DoSE score" and r["dose_percentile_val"] > 90
    inverted = 255 - splits.test.images[6, 0].numpy()
    r_inv = _json(server, "POST", "/api/upload", _png(inverted))[1]
    r_in = _json(server, "POST", "/api/upload", _test_png(splits, 6))[1]
    assert r_inv["nll"] > r_in["nll"] and r_inv["ood_score"] > r_in["ood_score"]
    assert r_inv["verdict"] == UNUSUAL


def test_uploads_judged_as_a_set_as_vaelab_check_judges_them(server, runs, splits):
    """/api/set: the DoSE scores of several uploads judged as one set by the DoSE batch test, the verdict
    `vaelab check` gives the same images; a bad list is one line (400)."""
    from vaelab import check_images

    def scores_of(images):
        return [_json(server, "POST", "/api/upload", _png(im))[1]["dose_score"] for im in images]

    test = [splits.test.images[i, 0].numpy() for i in range(0, 36, 3)]
    noise = [np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8) for i in range(12)]
    status, seen = _json(server, "POST", "/api/set", json.dumps({"scores": scores_of(test)}).encode())
    assert status == 200 and seen["n"] == 12 and not seen["flagged"] and seen["p_value"] > seen["alpha"]
    assert seen["verdict"] == "consistent with the training distribution"
    checked = check_images(load_run(runs["vae"], checkpoint="last"), np.stack(test))
    assert {key: seen[key] for key in checked.batch.as_dict()} == checked.batch.as_dict()
    assert seen["flagged_one_by_one"] == int(checked.flagged.sum())
    status, odd = _json(server, "POST", "/api/set", json.dumps({"scores": scores_of(noise)}).encode())
    # one held-out validation score here is about 6e7: the first batch test, on the mean score, let these 12
    # noise images pass (p = 0.11); few are flagged one by one by this small model, the set is
    assert status == 200 and odd["flagged"] and odd["p_value"] < 0.01 and odd["statistic"] > odd["threshold"]
    assert odd["verdict"] == "not from the training distribution"
    for body, words in [(b"[1, 2]", 'send JSON {"scores"'), (b"not json", 'send JSON {"scores"'),
                        (b'{"scores": [1, "x"]}', "list of finite numbers"),
                        (b'{"scores": [1, NaN]}', "list of finite numbers"),
                        (b'{"scores": []}', "the number of scores must be from 1 to 1000"),
                        (json.dumps({"scores": [0.0] * 1001}).encode(), "from 1 to 1000, got 1001")]:
        status, answer = _json(server, "POST", "/api/set", body)
        assert status == 400 and words in answer["error"], (body[:30], answer)
    assert _json(server, "GET", "/api/set")[0] == 405


def test_upload_scores_are_repeatable_and_colour_becomes_grey(server, splits):
    grey = splits.test.images[4, 0].numpy()
    first = _json(server, "POST", "/api/upload", _png(grey))[1]
    assert first["verdict"] == TYPICAL
    assert _json(server, "POST", "/api/upload", _png(grey))[1]["nll"] == first["nll"]
    rgb = _json(server, "POST", "/api/upload", _png(np.stack([grey] * 3, -1)))[1]
    assert rgb["nll"] == first["nll"] and rgb["input"] == first["input"]
    sixteen = _png(grey.astype(np.uint16) * 257)
    assert Image.open(io.BytesIO(sixteen)).mode.startswith("I")
    wide = _json(server, "POST", "/api/upload", sixteen)[1]
    assert wide["input"] == first["input"]  # 16-bit grey scaled to 8 bits
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
    jpeg = _json(server, "POST", "/api/upload", buffer.getvalue(), {"Content-Type": "image/jpeg"})
    assert jpeg[0] == 200 and _pixels(jpeg[1]["input"]).shape == (8, 8)


# --------------------------------------------------------------------------- the verdict: DoSE, the worst of the numbers

SHOWN = ("recon_error_percentile_val", "nll_percentile_val", "ood_percentile_val", "dose_percentile_val")


def test_verdict_is_never_typical_while_a_shown_number_flags_the_image(server, splits):
    uploads = [_test_png(splits, i) for i in range(0, 80, 4)]
    uploads += [_png(255 - splits.test.images[i, 0].numpy()) for i in (1, 2)]  # inverted
    uploads += [_png(np.flipud(splits.test.images[i, 0].numpy()).copy()) for i in (3, 5)]  # upside down
    uploads += [_png(np.full((8, 8), 255, np.uint8)), _png(np.zeros((8, 8), np.uint8))]
    verdicts = []
    for body in uploads:
        r = _json(server, "POST", "/api/upload", body)[1]
        assert r["dose_score"] is not None and 0 <= r["dose_percentile_val"] <= 100
        flagged = [c for c in r["checks"] if c["flagged"]]
        assert all(c["percentile"] >= UNUSUAL_PERCENTILE for c in flagged) and len(r["checks"]) == 4
        assert sorted(c["percentile"] for c in r["checks"]) == sorted(r[key] for key in SHOWN)
        assert (r["verdict"] == UNUSUAL) == bool(flagged)
        if r["verdict"] == TYPICAL:  # no number shown to the user stands at the flagging percentile or above
            assert max(r[key] for key in SHOWN) < UNUSUAL_PERCENTILE
        verdicts.append(r["verdict"])
    assert verdicts[:20].count(TYPICAL) >= 15  # test images: mostly typical
    assert verdicts[-2:] == [UNUSUAL, UNUSUAL]  # a white and a black square


def test_upload_with_an_extreme_reconstruction_error_is_not_typical(runs, splits):
    """Issue 18: the explorer called an image "typical" (its OOD score at the 87th percentile) while its
    reconstruction error stood at the 100th percentile. With in-distribution references whose reconstruction
    errors all lie below the upload's, the same upload is judged unusual, whatever its other numbers say, and
    the reason names the number that flags it."""
    from dataclasses import replace

    app = ExplorerApp(load_run(runs["vae"], checkpoint="last"), splits, reference_images=REFERENCE)
    body = _test_png(splits, 4)
    first = app.score_upload(body)
    assert first["verdict"] == TYPICAL and first["recon_error_percentile_val"] < UNUSUAL_PERCENTILE
    val = app.reference.val
    app.reference = replace(app.reference, val=replace(val, recon_error=val.recon_error * 0 + 1e-9))
    r = app.score_upload(body)
    assert r["recon_error_percentile_val"] == 100 and r["dose_percentile_val"] == first["dose_percentile_val"]
    assert r["ood_percentile_val"] == first["ood_percentile_val"] < UNUSUAL_PERCENTILE
    assert r["verdict"] == UNUSUAL
    assert r["verdict_reason"] == "its reconstruction error is higher than that of 100.0% of the 100 validation images"
    # the other numbers flag it just the same: here the DoSE score, against held-out validation scores
    app.reference = replace(app.reference, val=val, dose=app.reference.dose * 0 - 1e9)
    r = app.score_upload(body)
    assert r["verdict"] == UNUSUAL and r["verdict_reason"].startswith("its DoSE score is higher than that of 100.0%")


def test_an_upload_gets_the_dose_score_vaelab_check_gives_it(server, runs, splits):
    """The explorer and `vaelab check` / check_images judge a user's image alike: the same binarization and
    statistics of the image alone, so the same DoSE score and percentile among the validation scores."""
    from vaelab import check_images

    images = splits.test.images[[3, 11]]
    checked = check_images(load_run(runs["vae"], checkpoint="last"), images)
    for i in range(2):
        r = _json(server, "POST", "/api/upload", _png(images[i, 0].numpy()))[1]
        assert r["dose_score"] == checked.scores[i] and r["dose_percentile_val"] == checked.percentiles[i]


def test_dose_scorer_is_fitted_once_and_reloaded(server, runs, splits, monkeypatch):
    from vaelab.evaluation import oodrun

    run_dir = runs["vae"]
    stored = sorted(p.name for p in (run_dir / "ood").iterdir())  # fitted by the server fixture's start-up
    assert any(n.startswith("dose-") and n.endswith(".json") for n in stored)
    assert any(n.startswith("dose-") and n.endswith(".safetensors") for n in stored)
    assert any(n.startswith("statistics-val-") for n in stored)
    first = ExplorerApp(load_run(run_dir, checkpoint="last"), splits, reference_images=30)

    def refuse(*args, **kwargs):
        raise AssertionError("the stored DoSE scorer should have been reused")

    monkeypatch.setattr(oodrun, "fit_dose", refuse)
    monkeypatch.setattr(oodrun, "compute_statistics", refuse)
    again = ExplorerApp(load_run(run_dir, checkpoint="last"), splits, reference_images=30)
    body = _test_png(splits, 7)
    a, b = first.score_upload(body), again.score_upload(body)
    assert a["dose_score"] == b["dose_score"] and a["dose_percentile_val"] == b["dose_percentile_val"]
    assert sorted(p.name for p in (run_dir / "ood").iterdir()) == stored
    info = again.info()["dose"]
    assert info["available"] and info["validation_images"] == 100
    assert "Gaussian mixture" in info["density"] or "kernel density" in info["density"]


def test_without_enough_validation_images_the_other_numbers_judge(tmp_path, splits):
    """A run with 60 validation images has no DoSE score (100 are needed): the answer says so, and the
    verdict comes from the numbers it does show."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = load_config(overrides=[*VAE[:-2], "data.val_size=60", "train.epochs=1", "train.batch_size=64"])
        train(cfg, tmp_path / "small", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    small = load_dataset(cfg.data)
    app = ExplorerApp(load_run(tmp_path / "small"), small, reference_images=30)
    assert app.dose is None and "at least 100 validation images" in app.info()["dose"]["note"]
    r = app.score_upload(_png(np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)))
    assert r["dose_score"] is None and r["verdict"] == UNUSUAL and "at least 100 validation images" in \
        r["verdict_reason"]
    with pytest.raises(RequestError, match="no DoSE score, so a set cannot be judged .*at least 100 validation"):
        app.check_set(b'{"scores": [1.0, 2.0]}')
    assert not (tmp_path / "small" / "ood").exists()


def _png_header_claiming(width: int, height: int) -> bytes:
    """A 1x1 grey PNG whose header claims width x height pixels (a decompression bomb's first bytes)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")  # in IHDR, then its CRC
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


@pytest.mark.parametrize("side", [9000, 30000])  # 81 megapixels (below Pillow's bomb limit), 900 (above it)
def test_decode_upload_refuses_a_huge_image_before_decoding_it(side):
    with pytest.raises(RequestError, match="8x8") as err:
        decode_upload(_png_header_claiming(side, side), (1, 8, 8))
    assert err.value.status == 422
    with pytest.raises(RequestError, match="takes 8x8") as err:
        decode_upload(_png(np.zeros((9, 8), np.uint8)), (1, 8, 8))
    assert err.value.status == 422
    assert decode_upload(_png(np.zeros((8, 8, 3), np.uint8)), (3, 8, 8)).shape == (1, 3, 8, 8)


def test_percentile_counts_ties_as_one_half():
    ref = np.array([1.0, 2.0, 3.0, 4.0])
    assert percentile(0.0, ref) == 0 and percentile(5.0, ref) == 100
    assert percentile(2.0, ref) == pytest.approx(37.5) and percentile(2.5, ref) == 50


# --------------------------------------------------------------------------- bad requests


BAD = [
    ("GET", "/api/samples?temperature=0", 400, "temperature"),
    ("GET", "/api/samples?temperature=-1", 400, "temperature"),
    ("GET", "/api/samples?temperature=1e9", 400, "temperature"),
    ("GET", "/api/samples?temperature=nan", 400, "finite"),
    ("GET", "/api/samples?temperature=warm", 400, "finite"),
    ("GET", "/api/samples?n=65", 400, "n must be"),
    ("GET", "/api/samples?n=0", 400, "n must be"),
    ("GET", "/api/samples?n=abc", 400, "integer"),
    ("GET", "/api/samples?seed=-1", 400, "seed"),
    ("GET", "/api/samples?n=2&n=3", 400, "once"),
    ("GET", "/api/samples?colour=red", 400, "unknown parameter"),
    ("GET", "/api/interpolate?a=0&b=1&t=1.5", 400, "t must be"),
    ("GET", "/api/interpolate?a=0&b=1&t=-0.1", 400, "t must be"),
    ("GET", "/api/interpolate?a=0&b=100000&t=0.5", 400, "test image index"),
    ("GET", "/api/interpolate?a=0&b=1", 400, "either t"),
    ("GET", "/api/interpolate?a=0&b=1&t=0.5&method=cubic", 400, "lerp or slerp"),
    ("GET", "/api/interpolate?a=0&b=1&steps=1000", 400, "steps"),
    ("GET", "/api/traverse?dim=20&value=0", 400, "dim must be from 0 to 19"),
    ("GET", "/api/traverse?dim=-1&value=0", 400, "dim"),
    ("GET", "/api/traverse?dim=0&value=9", 400, "value must be"),
    ("GET", "/api/traverse?dim=0&value=1&base=-3", 400, "base"),
    ("GET", "/api/traverse?dim=0&value=1&base=me", 400, "integer"),
    ("GET", "/api/test-images?n=1000", 400, "n must be"),
    ("GET", "/api/nothing", 404, "no such"),
    ("GET", "/../../etc/passwd", 404, "no such"),
    ("POST", "/api/samples", 405, "takes GET"),
    ("DELETE", "/api/info", 405, "takes GET"),
    ("GET", "/api/upload", 405, "takes POST"),
    ("POST", "/api/upload", 415, "not an image"),  # body: text
    ("POST", "/api/upload?x=1", 400, "unknown parameter"),
]


@pytest.mark.parametrize("method,path,status,words", BAD)
def test_bad_requests_get_a_4xx_with_a_message(server, method, path, status, words):
    body = b"this is not an image" if method == "POST" else None
    got, data = _json(server, method, path, body)
    assert got == status and words in data["error"], data
    assert "Traceback" not in data["error"]
    if status == 405:
        assert _request(server, method, path, body)[1]["Allow"] in ("GET, HEAD", "POST")


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (as it does after these errors)."""
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_upload_limits_and_the_server_stays_up(server, splits):
    status, data = _json(server, "POST", "/api/upload", b"\0" * (MAX_BODY + 1))
    assert status == 413 and "at most" in data["error"]
    status, data = _json(server, "POST", "/api/upload", _png(np.zeros((28, 28), np.uint8)))
    assert status == 422 and "8x8" in data["error"]
    status, data = _json(server, "POST", "/api/upload", b"")
    assert status == 400 and "empty" in data["error"]
    status, data = _json(server, "POST", "/api/upload", _test_png(splits, 0)[:40])
    assert status in (400, 415)
    status, data = _json(server, "GET", "/api/info", headers={"Host": "attacker.example:8765"})
    assert status == 403 and "127.0.0.1" in data["error"]
    assert _json(server, "GET", "/api/info", headers={"Host": f"localhost:{server.port}"})[0] == 200
    # a refused body is not read as the next request of a keep-alive connection
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/api/samples", body=b"GET /api/nothing HTTP/1.1\r\n\r\n")
    response = conn.getresponse()
    assert response.status == 405 and json.loads(response.read())["error"]
    conn.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b'{"error": ' in answer
    # a client that asks before sending 10 MB is refused before it sends them
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 413") and b"at most" in answer
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:  # a body cut short
        sock.sendall(b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n0123456789")
        sock.shutdown(socket.SHUT_WR)
        answer = _until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b"after 10 of 100 bytes" in answer
    assert _json(server, "GET", "/api/info")[0] == 200


def test_a_server_error_is_a_500_with_a_message_and_the_server_goes_on(server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(server.app, "samples", broken)
    status, data = _json(server, "GET", "/api/samples")
    assert status == 500 and "RuntimeError" in data["error"] and "simulated" not in data["error"]
    assert any("simulated failure" in line and "Traceback" in line for line in server.lines)
    monkeypatch.undo()
    assert _json(server, "GET", "/api/samples?n=1")[0] == 200


def test_too_many_open_connections_get_503(server):
    small = ExplorerServer(("127.0.0.1", 0), server.app, max_connections=1)
    thread = threading.Thread(target=small.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", small.port), timeout=10) as idle:
            time.sleep(0.3)  # the idle connection holds the only slot
            status, data = _json(small, "GET", "/api/info")
            assert status == 503 and "busy" in data["error"]
        deadline = time.time() + 20  # the slot is freed when the idle connection closes
        while _request(small, "GET", "/api/info")[0] != 200:
            assert time.time() < deadline
            time.sleep(0.1)
    finally:
        small.shutdown()
        small.server_close()


# --------------------------------------------------------------------------- speed and load


def test_each_endpoint_answers_well_under_a_second(server, splits):
    """Each endpoint's best time over 9 rounds, a new connection per request, is under 0.3 s (2 to 10 ms when idle).

    Not the median: the suite runs on 2 cores shared with the other xdist worker and whatever else the
    machine does, and there a request can wait for the scheduler far longer than it computes; a busy
    spell over 4 of one endpoint's 7 back-to-back requests was enough to fail a median bound. The best
    of 9 needs one unhindered answer, and the rounds go through the endpoints in turn, so a busy spell
    costs each endpoint a request or two instead of one endpoint all of them. An endpoint that became
    slow in itself (rescoring the references per upload, a stall per connection) still fails: every
    round is slow."""
    upload = _test_png(splits, 1)
    calls = {
        "samples n=16": ("GET", "/api/samples?n=16&temperature=0.8&seed=1", None),
        "test-images n=40": ("GET", "/api/test-images?n=40", None),
        "interpolate t": ("GET", "/api/interpolate?a=1&b=2&t=0.3", None),
        "interpolate steps=9": ("GET", "/api/interpolate?a=1&b=2&steps=9", None),
        "traverse value": ("GET", "/api/traverse?dim=1&value=2&base=4", None),
        "upload k=100": ("POST", "/api/upload", upload),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(9):
        for name, (method, path, body) in calls.items():
            t0 = time.perf_counter()
            assert _request(server, method, path, body)[0] == 200
            times[name].append(time.perf_counter() - t0)
    best = {name: min(t) for name, t in times.items()}
    print("latency (s), best / median of 9: " + ", ".join(
        f"{name} {best[name]:.4f} / {statistics.median(t):.4f}" for name, t in times.items()))
    assert max(best.values()) < 0.3, best


def test_load_from_several_clients_gets_every_answer_and_no_5xx(server, splits):
    upload = _test_png(splits, 2)
    mix = [("GET", "/api/samples?n=16&temperature=1.2&seed={i}", None, 200),
           ("GET", "/api/interpolate?a={i}&b=9&t=0.5", None, 200),
           ("GET", "/api/traverse?dim={d}&value=1.5", None, 200),
           ("POST", "/api/upload", upload, 200),
           ("GET", "/api/test-images?offset={i}&n=20", None, 200),
           ("GET", "/api/samples?temperature=0", None, 400),
           ("POST", "/api/upload", b"not an image", 415),
           ("GET", "/api/missing", None, 404)]
    results: list[tuple[int, int, float]] = []
    failures: list[str] = []

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # one keep-alive connection
        try:
            for i in range(25):
                method, path, body, expected = mix[(i + worker) % len(mix)]
                t0 = time.perf_counter()
                conn.request(method, path.format(i=i, d=i % 20), body=body)
                response = conn.getresponse()
                response.read()
                results.append((response.status, expected, time.perf_counter() - t0))
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures and len(results) == 150
    assert all(status == expected for status, expected, _ in results)
    lat = np.array([r[2] for r in results])
    print(f"load: 6 clients x 25 requests, latency p50 {np.percentile(lat, 50):.4f} s, "
          f"p90 {np.percentile(lat, 90):.4f} s, p99 {np.percentile(lat, 99):.4f} s, max {lat.max():.4f} s")
    assert _json(server, "GET", "/api/info")[0] == 200


# --------------------------------------------------------------------------- other model kinds


def test_autoencoder_reconstructs_and_says_it_has_no_likelihood(runs, splits):
    app = ExplorerApp(load_run(runs["ae"]), splits, reference_images=50)
    assert not app.has_likelihood and app.info()["k"] is None
    r = app.score_upload(_test_png(splits, 0))
    assert r["nll"] is None and "not defined for an autoencoder" in r["note"]
    assert _pixels(r["reconstruction"]).shape == (8, 8) and 0 <= r["recon_error_percentile_train"] <= 100
    noise = app.score_upload(_png(np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)))
    assert noise["recon_error"] > r["recon_error"] and noise["verdict"] == UNUSUAL
    code_std = app.model.code_std
    dim = int(torch.argmax(code_std))  # traversal moves the code in units of the fitted code distribution
    low, high = (_pixels(app.traverse(dim, value=v)["image"]) for v in (-3.0, 3.0))
    assert not np.array_equal(low, high)
    assert len(app.samples(4, 1.0, 0)["images"]) == 4


def test_hierarchical_vae_explores_and_scores(runs, splits):
    app = ExplorerApp(load_run(runs["hvae"]), splits, reference_images=30, k=20)
    assert app.has_likelihood and app.kind == "hvae"
    a = app.samples(3, 1.0, 5)["images"]
    assert a == app.samples(3, 1.0, 5)["images"] and _pixels(a[0]).shape == (8, 8)
    assert len(app.interpolate(0, 1, steps=3)["images"]) == 3
    assert _pixels(app.traverse(app.model.latent_dim - 1, value=2.0, base=3)["image"]).shape == (8, 8)
    r = app.score_upload(_test_png(splits, 2))
    assert r["k"] == 20 and r["nll"] > 0 and r["verdict"] in (TYPICAL, UNUSUAL)
    with pytest.raises(RequestError, match="dim must be"):
        app.traverse(app.model.latent_dim, value=0.0)


# --------------------------------------------------------------------------- the command line


def test_cli_serves_until_interrupted(runs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "serve", str(runs["vae"]), "--port", "0", "--quiet",
                             "--host", "127.0.0.1", "--checkpoint", "last", "--reference-images", "30", "--k", "20"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_default_sigint)  # SIGINT as at a terminal, however the suite was started
    try:
        lines = []
        while not any(line.startswith("open http://") for line in lines):
            line = proc.stdout.readline()
            assert line, (lines, proc.stderr.read())
            lines.append(line)
        assert "k=20" in lines[0] and "30 training and 30 test images" in lines[0]
        port = int(lines[-1].split(":")[2].split("/")[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/info")
        info = json.loads(conn.getresponse().read())
        assert info["k"] == 20 and info["epoch"] == 4
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in err, (proc.returncode, out, err)
    assert "/api/info" not in err  # --quiet: no line per request


def test_ctrl_c_while_a_handler_thread_starts_stops_the_server(monkeypatch):
    """A Ctrl-C that lands while the server's main thread waits in Thread.start() for a handler thread (on a busy
    machine the handler can have answered by then) must reach serve() as KeyboardInterrupt, and the connection
    slot must come back once. It used to be released twice: the ValueError replaced the KeyboardInterrupt,
    socketserver swallowed it, and `vaelab serve` ignored the Ctrl-C (test_cli_serves_until_interrupted hung)."""
    server = ExplorerServer(("127.0.0.1", 0), None, max_connections=2)
    ours, theirs = socket.socketpair()
    real_start = threading.Thread.start

    def start_then_interrupted(self):
        real_start(self)
        raise KeyboardInterrupt  # the signal, arriving in start()'s wait

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            server.process_request(ours, ("127.0.0.1", 1))
    finally:
        monkeypatch.undo()
        theirs.close()  # the handler reads end-of-file and finishes
    assert server.slots.acquire(timeout=10) and server.slots.acquire(timeout=10)  # both slots, back once each
    assert not server.slots.acquire(blocking=False)
    server.server_close()


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default disposition (a parent started in the background ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("args,words", [(["--port", "70000"], "port must lie between"),
                                        (["--k", "0"], "--k must lie between 1 and"),
                                        (["--reference-images", "3"], "--reference-images must lie between")])
def test_cli_refuses_bad_options(runs, capsys, args, words):
    assert main(["serve", str(runs["vae"]), *args]) == 2
    assert words in capsys.readouterr().err
    if args[0] != "--port":  # checked before the model and the data are loaded: a missing run is not reached
        assert main(["serve", "no/such/run", *args]) == 2
        assert words in capsys.readouterr().err


def test_cli_refuses_a_busy_port(runs, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(runs["vae"]), "--port", str(busy.getsockname()[1])]) == 2
    assert "choose another --port" in capsys.readouterr().err


def test_serve_warns_off_loopback_and_stops_on_sigterm(server):
    other = ExplorerServer(("127.0.0.1", 0), server.app)
    other.loopback = False  # as if bound to 0.0.0.0
    said: list[str] = []
    answered: list[int] = []
    before = signal.getsignal(signal.SIGTERM)

    def terminate_once_serving() -> None:
        # not after a fixed delay: on a busy machine a SIGTERM sent before serve() installs its handler
        # would kill the test process itself. An answer means serve_forever runs, the handler installed first.
        try:
            answered.append(_request(other, "GET", "/api/info")[0])
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=terminate_once_serving, daemon=True)
    sender.start()
    serve(other, said.append)  # in the main thread, as the CLI runs it: SIGTERM stops it like Ctrl-C
    sender.join(30)
    assert answered == [200]
    assert "reachable from other machines" in said[0] and said[-1] == "stopped"
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", other.port), timeout=2).close()


def test_serve_ends_open_connections_before_it_returns(server):
    """A handler thread still running when the interpreter exits is stopped mid-code, and with PyTorch loaded that
    aborts the process (`vaelab serve` exited -6 after a clean Ctrl-C, once in about a hundred stops on a busy
    machine). serve() must end the open keep-alive connections and wait for their threads before it returns."""
    other = ExplorerServer(("127.0.0.1", 0), server.app)
    client = http.client.HTTPConnection("127.0.0.1", other.port, timeout=30)
    answered: list[int] = []

    def ask_then_terminate() -> None:
        try:
            client.request("GET", "/api/info")  # HTTP/1.1: the connection stays open, its handler waits for more
            response = client.getresponse()
            response.read()
            answered.append(response.status)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=ask_then_terminate, daemon=True)
    sender.start()
    started = time.monotonic()
    serve(other, lambda line: None)
    sender.join(30)
    assert answered == [200]
    assert other.open_connections == 0  # without the wait, the handler sat in its 15 s keep-alive read
    assert time.monotonic() - started < 10
    client.sock.settimeout(5)
    assert client.sock.recv(1) == b""  # the server closed its end
    client.close()


# --------------------------------------------------------------------------- the page in headless Chromium


PAGE_WAIT = 60  # seconds the page may take to show a change: a bound for a busy machine, not a speed test
IMAGE_STATE = """
const img = document.getElementById(arguments[0]);
if (!img || !img.complete || !img.naturalWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
let lo = 255, hi = 0;
for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
return [img.src, canvas.width, lo, hi];
"""


def test_page_in_headless_chromium(server, browser, tmp_path, splits):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    def state(element_id):
        return browser.execute_script(IMAGE_STATE, element_id)

    def changed(element_id, before):
        """Wait until the image shows a new, non-blank picture; return its state."""
        def ready(_):
            s = state(element_id)
            return s if s and s[0] != before and s[3] > s[2] else False
        return WebDriverWait(browser, PAGE_WAIT).until(ready, f"{element_id} did not change")

    browser.get(server.url)
    for element_id in ("sample-0", "interp", "traverse", "thumb-0"):
        changed(element_id, None)
    assert state("sample-0")[1] == 8  # the model's own size, enlarged by CSS

    sample = state("sample-0")[0]
    slider = browser.find_element(By.ID, "temperature")
    for _ in range(4):
        slider.send_keys(Keys.ARROW_LEFT)
    sample = changed("sample-0", sample)[0]
    browser.find_element(By.ID, "resample").click()
    changed("sample-0", sample)
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "1"

    interp = state("interp")[0]
    browser.find_element(By.ID, "thumb-5").click()  # A
    browser.find_element(By.ID, "thumb-9").click()  # B
    assert "a" in browser.find_element(By.ID, "thumb-5").get_attribute("class").split()
    interp = changed("interp", interp)[0]
    t = browser.find_element(By.ID, "t")
    for _ in range(20):
        t.send_keys(Keys.ARROW_RIGHT)
    changed("interp", interp)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#interp-path img")) == 9

    info = json.loads(_request(server, "GET", "/api/info")[2])
    top = int(np.argmax(info["activity"]))
    assert Select(browser.find_element(By.ID, "dim")).first_selected_option.get_attribute("value") == str(top)
    traverse = state("traverse")[0]
    value = browser.find_element(By.ID, "value")
    for _ in range(25):
        value.send_keys(Keys.ARROW_RIGHT)
    changed("traverse", traverse)

    big = tmp_path / "digit-32.png"  # not the model's size: the page resizes it in a canvas
    Image.fromarray(splits.test.images[3, 0].numpy()).resize((32, 32)).save(big)
    browser.find_element(By.ID, "upload").send_keys(str(big))
    changed("upload-recon", None)
    changed("upload-input", None)
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: d.find_element(By.ID, "verdict").text)
    assert "nats (k = 100)" in browser.find_element(By.ID, "nll").text
    assert browser.find_element(By.ID, "verdict").get_attribute("class") in ("typical", "unusual")

    recon = state("upload-recon")[0]
    browser.find_element(By.ID, "resize").click()  # off: the server's 422 is shown, the old results stay
    other = tmp_path / "digit-32b.png"
    Image.fromarray(255 - splits.test.images[4, 0].numpy()).resize((32, 32)).save(other)
    browser.find_element(By.ID, "upload").send_keys(str(other))
    WebDriverWait(browser, PAGE_WAIT).until(lambda d: d.find_element(By.ID, "upload-error").text)
    assert "8x8" in browser.find_element(By.ID, "upload-error").text
    assert state("upload-recon")[0] == recon
    assert not browser.find_element(By.ID, "error").is_displayed()

    # several files: each scored (a thumbnail, red when unusual), the first one's numbers shown, the set judged
    browser.find_element(By.ID, "resize").click()  # back on
    assert not browser.find_element(By.ID, "set-result").is_displayed()
    paths = []
    for i in range(6):
        paths.append(tmp_path / f"noise-{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (8, 8), dtype=np.uint8)).save(paths[-1])
    recon = state("upload-recon")[0]
    browser.find_element(By.ID, "upload").send_keys("\n".join(map(str, paths)))
    WebDriverWait(browser, PAGE_WAIT).until(
        lambda d: d.find_element(By.ID, "set-verdict").text.startswith("As a set"), "no set verdict")
    verdict = browser.find_element(By.ID, "set-verdict")
    assert "As a set of 6 images: not from the training distribution" in verdict.text
    assert verdict.get_attribute("class") == "unusual" and "6 of 6 judged unusual one by one" in verdict.text
    assert "mean percentile" in verdict.text and "-log of the smaller p-value" in verdict.text
    assert not any(word in verdict.text for word in ("undefined", "NaN", "null"))
    thumbs = browser.find_elements(By.CSS_SELECTOR, "#set-thumbs img")
    assert len(thumbs) == 6 and all("unusual" in t.get_attribute("class").split() for t in thumbs)
    assert thumbs[0].get_attribute("title").startswith("noise-0.png: unusual")
    assert state("upload-recon")[0] != recon and browser.find_element(By.ID, "upload-error").text == ""
    tests = []
    for i in range(12):
        tests.append(tmp_path / f"test-{i}.png")
        Image.fromarray(splits.test.images[i, 0].numpy()).save(tests[-1])
    browser.find_element(By.ID, "upload").send_keys("\n".join(map(str, tests)))  # replaces the six
    WebDriverWait(browser, PAGE_WAIT).until(
        lambda d: "As a set of 12 images" in d.find_element(By.ID, "set-verdict").text, "no verdict for 12")
    assert "consistent with the training distribution" in browser.find_element(By.ID, "set-verdict").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#set-thumbs img")) == 12
