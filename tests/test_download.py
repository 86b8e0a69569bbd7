"""Download code, tested against a local HTTP server on 127.0.0.1 (no internet here)."""

import gzip
import hashlib
import http.server
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vaelab.data import load_raw, write_idx
from vaelab.data import sources
from vaelab.data.download import download_file
from vaelab.errors import DatasetNotFoundError, DownloadError


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set[str] = set()
    redirects: dict[str, str] = {}
    requests: list[str] = []
    # misbehaviours, by file name: "stall" (headers, then silence), "trickle" (a byte every 50 ms,
    # forever), "long" (Content-Length 1000 more than sent), "short" (Content-Length 10 less than the body),
    # "fail:N" (the first N requests get a 503), "drop:N" (the first N get half the body, then a hang-up)
    modes: dict[str, str] = {}
    release = threading.Event()  # set at teardown: stalled handlers give up

    def log_message(self, *args):
        pass

    def _misbehave(self, name: str) -> bool:
        mode = self.modes.get(name)
        if mode is None:
            return False
        body = (Path(self.directory) / name).read_bytes()
        seen = sum(1 for r in _Handler.requests if r.lstrip("/") == name)
        if mode.startswith(("fail:", "drop:")) and seen > int(mode.split(":")[1]):
            return False  # recovered: serve the file normally
        try:
            if mode.startswith("fail:"):
                self.send_error(503, "try later")
                return True
            self.send_response(200)
            length = {"long": len(body) + 1000, "short": len(body) - 10}.get(mode, len(body))
            self.send_header("Content-Length", str(length))
            self.end_headers()
            if mode == "stall":
                self.wfile.flush()
                self.release.wait(10)
            elif mode == "trickle":
                for i in range(2000):
                    if self.release.is_set():
                        break
                    self.wfile.write(body[i % len(body): i % len(body) + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            elif mode.startswith("drop:"):
                self.wfile.write(body[: len(body) // 2])
            else:  # long, short: the whole body, whatever the header said
                self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True
        return True

    def do_GET(self):
        _Handler.requests.append(self.path)
        if self._misbehave(self.path.lstrip("/")):
            return
        if self.path.lstrip("/") in self.redirects:
            self.send_response(302)
            self.send_header("Location", self.redirects[self.path.lstrip("/")])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.lstrip("/") in self.truncate:
            # promise the full length, send half, hang up
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.release.clear()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    _Handler.release.set()
    httpd.shutdown()
    httpd.server_close()
    _Handler.truncate = set()
    _Handler.redirects = {}
    _Handler.requests = []
    _Handler.modes = {}


def test_good_file_is_accepted(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"hello vaelab" * 1000)
    digest = hashlib.sha256(b"hello vaelab" * 1000).hexdigest()
    dest = download_file(url + "f.bin", tmp_path / "cache" / "f.bin", digest)
    assert dest.read_bytes() == b"hello vaelab" * 1000


def test_wrong_hash_is_rejected_and_not_left_in_cache(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(url + "f.bin", cache / "f.bin", "0" * 64)
    assert list(cache.iterdir()) == []  # neither the file nor a partial temp file


def test_dropped_connection_leaves_nothing(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(bytes(100_000))
    _Handler.truncate = {"f.bin"}
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="could not download"):
        download_file(url + "f.bin", cache / "f.bin", hashlib.sha256(bytes(100_000)).hexdigest(), retries=1)
    assert list(cache.iterdir()) == []


def test_missing_file_and_plain_http_to_other_hosts(server, tmp_path):
    root, url = server
    _Handler.requests = []
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(url + "nope.bin", tmp_path / "x", "0" * 64, retries=3)
    assert _Handler.requests == ["/nope.bin"]  # a 404 is not retried
    with pytest.raises(DownloadError, match="only https"):
        download_file("http://example.com/x.gz", tmp_path / "x", "0" * 64)
    # a redirect to plain http elsewhere is refused too, before anything is fetched from there
    _Handler.redirects = {"moved.bin": "http://example.com/x.gz"}
    with pytest.raises(DownloadError, match="only https"):
        download_file(url + "moved.bin", tmp_path / "x", "0" * 64, retries=3)
    assert _Handler.requests[1:] == ["/moved.bin"]
    # and a redirect the rules allow is followed
    (root / "real.bin").write_bytes(b"data")
    _Handler.redirects = {"moved.bin": url + "real.bin"}
    download_file(url + "moved.bin", tmp_path / "y", hashlib.sha256(b"data").hexdigest())
    assert (tmp_path / "y").read_bytes() == b"data"


def test_dataset_download_into_cache_verified(server, tmp_path, monkeypatch):
    """With no copy anywhere, `mnist` is fetched from a mirror, verified against the
    official SHA-256 values, and loaded. The files served are made to match by
    patching the expected hashes (the real table is checked for form below)."""
    root, url = server
    rng = np.random.default_rng(0)
    files = {}
    (root / "mnist").mkdir()
    for role, stem in sources.IDX_DATASETS["mnist"].files.items():
        n = 30 if role.startswith("train") else 10
        arr = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8) if "images" in role else \
            rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / "mnist" / f"{stem}.gz", arr)
        files[role] = hashlib.sha256((root / "mnist" / f"{stem}.gz").read_bytes()).hexdigest()
    spec = sources.IDX_DATASETS["mnist"]
    monkeypatch.setitem(sources.IDX_DATASETS, "mnist", sources.IdxDataset(
        name="mnist", files=spec.files, sha256=files, mirrors=(url + "mnist/",), classes=spec.classes,
        homepage=spec.homepage))
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    monkeypatch.delenv("VAELAB_OFFLINE")
    raw = load_raw("mnist", download=True)
    assert raw.train_images.shape == (30, 1, 28, 28) and raw.test_images.shape == (10, 1, 28, 28)
    assert "cache" in raw.source
    cached = sorted(p.name for p in (sources.cache_root() / "mnist").iterdir())
    assert cached == sorted(f"{s}.gz" for s in spec.files.values())

    # a mirror serving a wrong file: the download fails, nothing is cached, one clear error
    import shutil

    shutil.rmtree(sources.cache_root() / "mnist")
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8) + 1)
    with pytest.raises(DatasetNotFoundError, match="SHA-256"):
        load_raw("mnist", download=True)
    assert not (sources.cache_root() / "mnist" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not any(p.name.startswith(".") for p in (sources.cache_root() / "mnist").iterdir())
    # the half-filled cache is not taken for the dataset (that would carve a test split out of train):
    # offline, it is "not found"; once the mirror is fixed, the download resumes with the missing file only
    monkeypatch.setenv("VAELAB_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match="not found"):
        load_raw("mnist", download=True)
    monkeypatch.delenv("VAELAB_OFFLINE")
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 10, dtype=np.uint8))
    files["test_labels"] = hashlib.sha256((root / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest()
    _Handler.requests = []
    raw = load_raw("mnist", download=True)
    assert raw.test_images is not None and raw.test_labels is not None
    assert _Handler.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]


def test_offline_refuses_to_download(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "SYSTEM_DATA_DIR", tmp_path / "no-system")
    with pytest.raises(DatasetNotFoundError, match="VAELAB_OFFLINE"):
        load_raw("mnist", download=True)


def test_hash_table_is_well_formed_and_debian_copy_is_complete(fashion_mnist_dir):
    """Debian recompresses the files (their .gz hashes differ from the official
    ones), so check the decompressed size; and that every hash entry is well formed."""
    for spec in sources.IDX_DATASETS.values():
        assert set(spec.sha256) == set(spec.files)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in spec.sha256.values())
        assert all(m.startswith("https://") and m.endswith("/") for m in spec.mirrors)
    data = gzip.decompress((fashion_mnist_dir / "train-images-idx3-ubyte.gz").read_bytes())
    assert len(data) == 16 + 60000 * 28 * 28


# --------------------------------------------------------------------------- a misbehaving server


BODY = bytes(range(256)) * 400  # 100 KiB
GOOD = hashlib.sha256(BODY).hexdigest()


def _cached_good_file(cache: Path) -> Path:
    """A file already in the cache, verified earlier: no failed download may touch it."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "f.bin").write_bytes(b"the good copy")
    return cache / "f.bin"


def _assert_cache_untouched(cache: Path) -> None:
    assert sorted(p.name for p in cache.iterdir()) == ["f.bin"]  # no .part file, nothing else
    assert (cache / "f.bin").read_bytes() == b"the good copy"


@pytest.mark.parametrize("mode, retries, expect", [
    ("stall", 1, "no data for 0.5 s: the server stalled"),
    ("trickle", 1, "the server stalled"),
    ("long", 2, "closed after 102400 of 103400 bytes"),
    ("drop:99", 2, "could not download"),
    ("fail:99", 3, "HTTP 503 try later"),
])
def test_misbehaving_server_fails_in_bounded_time_and_attempts(server, tmp_path, mode, retries, expect):
    """Each failure is retried exactly `retries` times (the server sees retries + 1 requests), then one
    clear DownloadError; within a time bound; the cache holds only the good file it held before."""
    root, url = server
    (root / "f.bin").write_bytes(BODY)
    _Handler.modes = {"f.bin": mode}
    cache = tmp_path / "cache"
    _cached_good_file(cache)
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="could not download .* after") as info:
        download_file(url + "f.bin", cache / "f.bin", GOOD, timeout=0.5, retries=retries, backoff=0.01)
    elapsed = time.monotonic() - t0
    assert expect in str(info.value) and "\n" not in str(info.value)
    # the client may give up on its last attempt before the server's handler thread has read that request (a
    # busy machine: the retry's "no data for 0.5 s"); let the server catch up before counting, never past 5 s
    deadline = time.monotonic() + 5
    while len(_Handler.requests) < retries + 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _Handler.requests == ["/f.bin"] * (retries + 1)
    # each attempt is bounded by about 2 x timeout (silence, or one slow window plus a read)
    assert elapsed < (retries + 1) * 1.5 + 1.0, elapsed
    _assert_cache_untouched(cache)


def test_content_length_shorter_than_the_body_is_a_hash_mismatch_not_retried(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(BODY)
    _Handler.modes = {"f.bin": "short"}
    cache = tmp_path / "cache"
    _cached_good_file(cache)
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(url + "f.bin", cache / "f.bin", GOOD, timeout=0.5, retries=3, backoff=0.01)
    assert _Handler.requests == ["/f.bin"]  # the wrong bytes are not asked for again
    _assert_cache_untouched(cache)


def test_wrong_bytes_never_replace_the_cached_file(server, tmp_path):
    root, url = server
    (root / "f.bin").write_bytes(b"tampered")
    cache = tmp_path / "cache"
    _cached_good_file(cache)
    with pytest.raises(DownloadError, match="SHA-256"):
        download_file(url + "f.bin", cache / "f.bin", GOOD, timeout=0.5, retries=3, backoff=0.01)
    _assert_cache_untouched(cache)


@pytest.mark.parametrize("mode", ["fail:2", "drop:2"])
def test_flaky_server_is_retried_a_bounded_number_of_times(server, tmp_path, mode):
    """Two failures then success: retries=2 gets the file on the third request; retries=1 gives up
    after exactly two, leaving no partial file."""
    root, url = server
    (root / "f.bin").write_bytes(BODY)
    _Handler.modes = {"f.bin": mode}
    with pytest.raises(DownloadError, match="after 2 attempts"):
        download_file(url + "f.bin", tmp_path / "a" / "f.bin", GOOD, timeout=2, retries=1, backoff=0.01)
    assert _Handler.requests == ["/f.bin"] * 2 and list((tmp_path / "a").iterdir()) == []
    _Handler.requests = []
    dest = download_file(url + "f.bin", tmp_path / "b" / "f.bin", GOOD, timeout=2, retries=2, backoff=0.01)
    assert dest.read_bytes() == BODY and _Handler.requests == ["/f.bin"] * 3
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["f.bin"]


def test_backoff_grows_and_is_bounded(server, tmp_path, monkeypatch):
    import vaelab.data.download as dl

    root, url = server
    (root / "f.bin").write_bytes(BODY)
    _Handler.modes = {"f.bin": "fail:99"}
    sleeps = []
    monkeypatch.setattr(dl.time, "sleep", sleeps.append)
    with pytest.raises(DownloadError):
        download_file(url + "f.bin", tmp_path / "f.bin", GOOD, retries=6)
    assert sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0] and len(_Handler.requests) == 7


def test_only_https_except_loopback(tmp_path):
    for url in ("http://example.com/f", "ftp://example.com/f", "file:///etc/passwd", "http://localhost.evil.com/f",
                "http://10.0.0.1/f", "//example.com/f", "example.com/f"):
        with pytest.raises(DownloadError, match="only https"):
            download_file(url, tmp_path / "f", GOOD)
    assert list(tmp_path.iterdir()) == []


def test_files_without_a_published_sha256_are_checked_by_git_blob_or_size(server, tmp_path):
    """Where no SHA-256 is published (Omniglot's chardata.mat), the git blob id and/or the size guard the file."""
    root, url = server
    (root / "f.bin").write_bytes(BODY)
    blob = hashlib.sha1(b"blob %d\0" % len(BODY) + BODY).hexdigest()  # what `git hash-object f.bin` prints
    assert download_file(url + "f.bin", tmp_path / "a" / "f.bin", None, git_blob=blob).read_bytes() == BODY
    with pytest.raises(DownloadError, match=f"has git blob id {blob}, expected 0000"):
        download_file(url + "f.bin", tmp_path / "b" / "f.bin", None, git_blob="0" * 40)
    with pytest.raises(DownloadError, match=f"has {len(BODY)} bytes, expected {len(BODY) + 1}"):
        download_file(url + "f.bin", tmp_path / "b" / "f.bin", None, size=len(BODY) + 1)
    assert list((tmp_path / "b").iterdir()) == []
    assert download_file(url + "f.bin", tmp_path / "c" / "f.bin", None, size=len(BODY)).read_bytes() == BODY


def test_named_catalog_is_well_formed():
    """Every standard dataset's files: https URLs, a SHA-256 (or, where none is published, a git blob id)."""
    for spec in sources.NAMED.values():
        assert spec.files and spec.forms[0] == tuple(f.name for f in spec.files)
        for f in spec.files:
            assert f.urls and all(u.startswith("https://") for u in f.urls)
            if f.sha256 is None:
                assert f.git_blob and len(f.git_blob) == 40 and int(f.git_blob, 16) >= 0 and spec.name == "omniglot"
            else:
                assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0
    assert {n for n, s in sources.NAMED.items() if any(f.sha256 is None for f in s.files)} == {"omniglot"}
