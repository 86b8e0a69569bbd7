"""Fuzzing the readers of untrusted input: IDX files, image folders, configs.

Structure-aware hypothesis strategies: valid IDX files with mutated magic, type
code, dimensions, truncation and gzip wrapping; folders of real PNG / JPEG /
BMP / WebP (and other formats under image names) that are truncated, bit-
flipped, zero bytes, huge-dimension headers, symlinks, mixed sizes and modes;
TOML configs, `--set` overrides and `from_dict` mappings with wrong types,
unknown keys, nested garbage, NaN/inf, huge ints and odd unicode.

The only acceptable outcomes are the documented error (`DataError` /
`ConfigError`) or a sane result. Runs derandomized (same examples every time);
`VAELAB_FUZZ_SCALE=100 pytest tests/test_fuzz.py` multiplies every example
count (the long run quoted in bench/results/fuzz.json).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from vaelab import config as C
from vaelab.data.idx import read_idx, read_idx_header, write_idx
from vaelab.data.sources import IMAGE_EXTENSIONS, load_folder, load_raw
from vaelab.errors import ConfigError, DataError

SCALE = float(os.environ.get("VAELAB_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    """Derandomized hypothesis settings: the same examples on every run, no database."""
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.large_base_example],
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One directory reused by every example of a test (files are overwritten)."""
    return tmp_path_factory.mktemp("fuzz")


PER_EXAMPLE_S = 5.0  # no input may take longer than this (a hang shows as a failure, not a stuck run)


# --------------------------------------------------------------------------- IDX

IDX_CODES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@st.composite
def idx_files(draw):
    """Bytes of an IDX file: valid, or valid with one or more structural mutations."""
    code = draw(st.sampled_from(sorted(IDX_CODES)))
    dtype = np.dtype(IDX_CODES[code])
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=1, max_size=4)))
    n = math.prod(shape)
    data = draw(st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize))
    header = [0, 0, code, len(shape)]
    dims = list(shape)
    mutations = draw(st.lists(st.sampled_from(
        ["magic", "code", "ndim", "dim", "huge_dim", "many_dims", "truncate", "append", "flip", "empty"]),
        max_size=3))
    for m in mutations:
        if m == "magic":
            header[draw(st.integers(0, 1))] = draw(st.integers(0, 255))
        elif m == "code":
            header[2] = draw(st.integers(0, 255))
        elif m == "ndim":
            header[3] = draw(st.integers(0, 255))
        elif m == "dim" and dims:
            dims[draw(st.integers(0, len(dims) - 1))] = draw(st.integers(0, 64))
        elif m == "huge_dim" and dims:
            dims[draw(st.integers(0, len(dims) - 1))] = draw(st.sampled_from(
                [2**31 - 1, 2**31, 2**32 - 1, 10**9, 60000 * 1000]))
        elif m == "many_dims":
            extra = draw(st.integers(1, 250))
            dims += [1] * extra
            header[3] = min(255, len(dims))
    blob = bytes(header) + b"".join(struct.pack(">I", d) for d in dims) + data
    for m in mutations:
        if m == "truncate":
            blob = blob[:draw(st.integers(0, len(blob)))]
        elif m == "append":
            blob += draw(st.binary(min_size=1, max_size=16))
        elif m == "flip" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            blob = blob[:i] + bytes([blob[i] ^ draw(st.integers(1, 255))]) + blob[i + 1:]
        elif m == "empty":
            blob = b""
    wrap = draw(st.sampled_from(["raw", "gzip", "gzip_truncated", "gzip_flipped", "gzip_header_only"]))
    if wrap != "raw":
        gz = gzip.compress(blob, mtime=0)
        if wrap == "gzip_truncated":
            gz = gz[:draw(st.integers(0, len(gz) - 1))]
        elif wrap == "gzip_flipped":
            i = draw(st.integers(2, len(gz) - 1))
            gz = gz[:i] + bytes([gz[i] ^ draw(st.integers(1, 255))]) + gz[i + 1:]
        elif wrap == "gzip_header_only":
            gz = gz[:draw(st.integers(2, 10))]
        blob = gz
    return blob


def _expected_idx(blob: bytes):
    """What a correct reader must return for `blob`: (dtype, shape, values) or None if malformed."""
    try:
        raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    except Exception:
        return None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in IDX_CODES or raw[3] == 0:
        return None
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        return None
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_CODES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(shape) * dtype.itemsize or ndim > 16:
        return None
    try:
        return dtype, shape, np.frombuffer(body, dtype=dtype).reshape(shape)
    except ValueError:  # numpy cannot hold the shape (a zero beside huge dimensions)
        return None


@fuzz(1200)
@given(blob=idx_files())
def test_fuzz_read_idx(scratch, blob):
    path = scratch / "f.idx"
    path.write_bytes(blob)
    expected = _expected_idx(blob)
    start = time.perf_counter()
    if expected is None:
        with pytest.raises(DataError, match=r"f\.idx"):
            read_idx(path)
    else:
        dtype, shape, values = expected
        arr = read_idx(path)
        assert arr.shape == shape and arr.dtype == dtype.newbyteorder("=")
        assert np.array_equal(arr, values, equal_nan=arr.dtype.kind == "f")
        assert read_idx_header(path) == (dtype, shape)
    assert time.perf_counter() - start < PER_EXAMPLE_S


@fuzz(150)
@given(images=idx_files(), labels=idx_files(), tests=st.booleans())
def test_fuzz_idx_dataset(images, labels, tests):
    """`load_raw("mnist", data_dir=...)` on fuzzed image / label files: DataError or consistent tensors."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "train-images-idx3-ubyte").write_bytes(images)
        (d / "train-labels-idx1-ubyte").write_bytes(labels)
        if tests:
            (d / "t10k-images-idx3-ubyte").write_bytes(images)
            (d / "t10k-labels-idx1-ubyte").write_bytes(labels)
        try:
            raw = load_raw("mnist", data_dir=str(d), download=False)
        except DataError:
            return
        x, y = raw.train_images, raw.train_labels
        assert x.ndim == 4 and str(x.dtype) == "torch.uint8" and len(x) == len(y)


def _peak_traced(fn):
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(DataError):
            fn()
        elapsed = time.perf_counter() - start
        return tracemalloc.get_traced_memory()[1], elapsed
    finally:
        tracemalloc.stop()


@fuzz(150)
@given(dims=st.lists(st.integers(2**20, 2**32 - 1), min_size=1, max_size=4),
       code=st.sampled_from(sorted(IDX_CODES)), payload=st.integers(0, 4096),
       compress=st.booleans(), header_only=st.booleans())
def test_fuzz_idx_huge_claims_fail_fast_and_small(dims, code, payload, compress, header_only):
    """Headers that claim billions of images: refused in milliseconds, with kilobytes of memory."""
    blob = struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + b"\x07" * payload
    if compress:
        blob = gzip.compress(blob, mtime=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.idx"
        path.write_bytes(blob)
        if header_only:  # the header itself is fine: it is only the data that is missing
            assert read_idx_header(path)[1] == tuple(dims)
            return
        peak, elapsed = _peak_traced(lambda: read_idx(path))
        assert peak < 4 << 20, f"reading a {len(blob)}-byte file claiming {dims} traced {peak} bytes"
        assert elapsed < 1.0


def test_idx_many_dimensions_is_a_data_error(tmp_path):
    """Regression: ndim > numpy's limit (255 dims of size 1) raised numpy's ValueError from reshape."""
    path = tmp_path / "deep.idx"
    path.write_bytes(struct.pack(">HBB", 0, 8, 100) + struct.pack(">100I", *[1] * 100) + b"\x01")
    with pytest.raises(DataError, match="dimensions"):
        read_idx(path)
    with pytest.raises(DataError, match="dimensions"):
        read_idx_header(path)
    ok = np.zeros((1,) * 8, np.uint8)  # up to 16 dimensions still read
    write_idx(tmp_path / "ok.idx", ok)
    assert read_idx(tmp_path / "ok.idx").shape == ok.shape


# --------------------------------------------------------------------------- image folders

MODES = ["1", "L", "P", "P_transparent", "RGB", "RGBA", "LA", "I;16", "I", "F", "CMYK", "YCbCr", "LAB", "HSV"]
FORMATS = ["PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF", "ICO", "PPM", "TGA", "PCX"]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int, color_type: int = 6, bit_depth: int = 8) -> bytes:
    """A tiny PNG whose IHDR claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def huge_bmp(width: int, height: int, bpp: int = 24) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, bpp, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\x00" * 16


def huge_jpeg(width: int, height: int) -> bytes:
    """A real 8x8 JPEG with its SOF0 size patched."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "JPEG")
    blob = bytearray(buf.getvalue())
    sof = blob.index(b"\xff\xc0")
    blob[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(blob)


def _image_bytes(mode: str, fmt: str, w: int, h: int, seed: int, exif: int | None) -> bytes | None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    transparent = mode == "P_transparent"
    base = "P" if transparent else mode
    if base in ("I;16", "I", "F"):
        arr = rng.integers(0, 65535, (h, w)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[base])
        img = Image.fromarray(arr) if base != "I;16" else Image.fromarray(arr.astype(np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        try:
            img = img.convert(base)
        except ValueError:
            return None
    buf = io.BytesIO()
    kwargs = {}
    if transparent:
        kwargs["transparency"] = 0
    if exif is not None:
        e = Image.Exif()
        e[0x0112] = exif
        kwargs["exif"] = e
    try:
        img.save(buf, fmt, **kwargs)
    except (OSError, ValueError, KeyError, TypeError):
        try:
            buf = io.BytesIO()
            img.save(buf, fmt)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return buf.getvalue()


@st.composite
def folder_entries(draw):
    """A list of (relative path, kind, payload) describing one folder tree."""
    entries = []
    for i in range(draw(st.integers(1, 4))):
        sub = draw(st.sampled_from(["", "a/", "b/", ".hidden/", "a/deep/"]))
        ext = draw(st.sampled_from(list(IMAGE_EXTENSIONS) + [".PNG", ".txt", ""]))
        name = f"{sub}{i}{ext}"
        kind = draw(st.sampled_from(["image"] * 6 + ["zero", "text", "bomb", "symlink", "dangling", "dir", "pixels"]))
        payload: bytes | None = None
        if kind == "image":
            w, h = draw(st.integers(1, 12)), draw(st.integers(1, 12))
            payload = _image_bytes(draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS)), w, h,
                                   draw(st.integers(0, 3)), draw(st.one_of(st.none(), st.integers(0, 9))))
            if payload is None:
                continue
            mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "append"]))
            if mutation == "truncate":
                payload = payload[:draw(st.integers(0, len(payload) - 1))]
            elif mutation == "flip":
                for _ in range(draw(st.integers(1, 4))):
                    j = draw(st.integers(0, len(payload) - 1))
                    payload = payload[:j] + bytes([payload[j] ^ draw(st.integers(1, 255))]) + payload[j + 1:]
            elif mutation == "append":
                payload += draw(st.binary(min_size=1, max_size=64))
        elif kind == "zero":
            payload = b""
        elif kind == "text":
            payload = draw(st.text(max_size=64)).encode("utf-8", "surrogatepass")
        elif kind == "bomb":
            side = draw(st.sampled_from([(65535, 65535), (20000, 20000), (9000, 9000), (6000, 6000),
                                         (2**31 - 1, 1), (1, 2**31 - 1), (0, 5), (5, 0)]))
            maker = draw(st.sampled_from(["png", "bmp", "jpeg"]))
            if maker == "png":
                payload = huge_png(*side, color_type=draw(st.sampled_from([0, 2, 4, 6])))
            elif maker == "bmp":
                payload = huge_bmp(*side)
            else:
                payload = huge_jpeg(min(side[0], 65535), min(side[1], 65535))
        elif kind == "pixels":
            payload = draw(st.binary(min_size=1, max_size=256))
        entries.append((name, kind, payload))
    return entries


def _materialize(root: Path, entries) -> None:
    root.mkdir()
    for name, kind, payload in entries:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() or p.is_symlink():
            continue
        if kind == "symlink":
            target = next((root / n for n, k, _ in entries if k == "image" and (root / n).exists()), root)
            p.symlink_to(target)
        elif kind == "dangling":
            p.symlink_to(root / "nowhere.png")
        elif kind == "dir":
            p.mkdir()
        else:
            p.write_bytes(payload)


@fuzz(400)
@given(entries=folder_entries(), image_size=st.one_of(st.none(), st.integers(1, 16)),
       channels=st.sampled_from([None, 1, 3]), resize=st.sampled_from(["resize", "pad"]))
def test_fuzz_load_folder(entries, image_size, channels, resize):
    import warnings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        _materialize(root, entries)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's own warnings (e.g. truncated EXIF) are not failures
                raw = load_folder(str(root), image_size, channels, resize)
        except DataError as exc:
            assert str(root) in str(exc)
        else:
            x, y = raw.train_images, raw.train_labels
            assert str(x.dtype) == "torch.uint8" and x.ndim == 4 and len(x) == len(y) > 0
            assert x.shape[1] in ((channels,) if channels else (1, 3))
            if image_size is not None:
                assert tuple(x.shape[2:]) == (image_size, image_size)
            assert int(y.min()) >= 0 and int(y.max()) < max(1, len(raw.classes))
        assert time.perf_counter() - start < PER_EXAMPLE_S


def test_folder_regressions(tmp_path):
    """Bombs within PIL's limit (the JPEG one even decoded: 243 MB), zero-size and non-image formats: refused."""
    from PIL import Image

    cases = {
        "bomb.png": huge_png(9000, 9000),  # within PIL's bomb limit: 324 MB allocated for a 100-byte file
        "bomb.jpg": huge_jpeg(9000, 9000),
        "bomb.bmp": huge_bmp(9000, 9000),
        "zero.bmp": huge_bmp(0, 5),
    }
    tiff = io.BytesIO()
    Image.new("LAB", (4, 4)).save(tiff, "TIFF")  # only the PNG, JPEG, BMP and WebP decoders are tried
    cases["tiff.png"] = tiff.getvalue()
    cases["eps.png"] = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\n"  # no Ghostscript on untrusted files
    for name, blob in cases.items():
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        (d / name).write_bytes(blob)
        start = time.perf_counter()
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            load_folder(str(d), 8, None, "resize")
        assert time.perf_counter() - start < 2.0, name


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_folder_valid_images_of_every_format_and_mode_load(tmp_path, fmt):
    """The other side of the fuzzing: what is valid still loads (each supported format, every mode it saves)."""
    count = 0
    for mode in MODES:
        blob = _image_bytes(mode, fmt, 6, 4, 0, None)
        if blob is not None:
            (tmp_path / f"{count}.{fmt.lower()}").write_bytes(blob)
            count += 1
    assert count >= 3
    for channels in (None, 1, 3):
        raw = load_folder(str(tmp_path), 5, channels, "pad")
        assert tuple(raw.train_images.shape) == (count, channels or raw.train_images.shape[1], 5, 5)
    jpeg = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (6, 4)).save(jpeg, "MPO", save_all=True, append_images=[Image.new("RGB", (6, 4))])
    (tmp_path / "camera.jpg").write_bytes(jpeg.getvalue())  # multi-picture JPEG, as cameras write
    assert len(load_folder(str(tmp_path), 5, None, "resize").train_images) == count + 1


def test_folder_unreadable_file(tmp_path):
    (tmp_path / "x.png").write_bytes(huge_png(4, 4))
    os.chmod(tmp_path / "x.png", 0)
    if os.access(tmp_path / "x.png", os.R_OK):
        pytest.skip("running as root: permissions do not stop reads")
    with pytest.raises(DataError, match="x.png"):
        load_folder(str(tmp_path), None, None, "resize")


def test_bombs_stay_small_in_memory(tmp_path):
    """Peak RSS (PIL and numpy allocate outside tracemalloc) of reading bombs, in a fresh process."""
    for i, blob in enumerate([huge_png(9000, 9000), huge_png(20000, 20000), huge_jpeg(9000, 9000),
                              huge_bmp(9000, 9000), huge_png(60000, 60000, 0)]):
        (tmp_path / f"b{i}").mkdir()
        (tmp_path / f"b{i}" / "x.png").write_bytes(blob)
    claim = struct.pack(">HBBIIII", 0, 8, 4, 2**32 - 1, 2**32 - 1, 28, 28) + b"\x00" * 1000
    (tmp_path / "claim.idx").write_bytes(claim)
    (tmp_path / "claim.idx.gz").write_bytes(gzip.compress(claim))
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from vaelab.data.idx import read_idx
        from vaelab.data.sources import load_folder
        from vaelab.errors import DataError
        root = Path({str(tmp_path)!r})
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for d in sorted(root.glob("b*")):
            try:
                load_folder(str(d), 8, None, "resize")
                sys.exit("no error for " + str(d))
            except DataError:
                pass
        for name in ("claim.idx", "claim.idx.gz"):
            try:
                read_idx(root / name)
                sys.exit("no error for " + name)
            except DataError:
                pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    grown_kib = int(out.stdout.split()[-1])
    assert grown_kib < 64 * 1024, f"peak RSS grew by {grown_kib} KiB reading bombs"
    assert time.perf_counter() - start < 60


# --------------------------------------------------------------------------- config

SECTION_NAMES = list(C.SECTIONS) + ["Data", "trainer", "", "data.x", "é"]


def _keys(section: str) -> list[str]:
    import dataclasses

    cls = C.SECTIONS.get(section)
    return [f.name for f in dataclasses.fields(cls)] if cls else []


ALL_KEYS = sorted({k for s in C.SECTIONS for k in _keys(s)})

weird_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=24) | st.sampled_from(
    ["none", "None", "null", "NaN", "cuda", "cuda:99", "folder:", "folder:/nonexistent", "\u202e", "𝕧𝕒𝕖",
     "fashion-mnist", "pad", "resize", "dynamic", "vae", "mlp", "bernoulli", "gaussian", "restore", "stop"])
big_ints = st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, -(2**31), 2**63, -(2**63) - 1, 10**20, 10**400, 10**4299])
scalars = st.one_of(
    st.integers(-70000, 70000), big_ints, st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -0.0, 5e-324, 1e-3, 0.5]),
    weird_text,
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    weird_text, inner, max_size=3), max_leaves=6)


def toml_value(v) -> str:
    """`v` written as a TOML value (inline tables for dicts, nan/inf as TOML spells them)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + "}"
    return C.toml_value(v)


def toml_key(k: str) -> str:
    return k if k and all(c.isascii() and (c.isalnum() or c in "-_") for c in k) else C.toml_value(k)


@st.composite
def toml_docs(draw):
    lines = []
    for section in draw(st.lists(st.sampled_from(SECTION_NAMES), max_size=3, unique=True)):
        lines.append(f"[{toml_key(section)}]" if draw(st.integers(0, 9)) else f"{toml_key(section)} = 3")
        names = _keys(section) + ["epoch", "unknown", "lr_"]
        for key in draw(st.lists(st.sampled_from(names or ALL_KEYS), max_size=4, unique=True)):
            lines.append(f"{toml_key(key)} = {toml_value(draw(values))}")
    text = "\n".join(lines) + "\n"
    mutation = draw(st.sampled_from(["none"] * 6 + ["truncate", "insert", "deep", "bytes", "text"]))
    if mutation == "truncate":
        text = text[:draw(st.integers(0, len(text)))]
    elif mutation == "insert":
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.text(max_size=8)) + text[i:]
    elif mutation == "deep":
        depth = draw(st.sampled_from([10, 100, 1000, 5000, 50000]))
        text += f"[train]\nlr = {'[' * depth}{']' * depth * draw(st.integers(0, 1))}\n"
    elif mutation == "bytes":
        return draw(st.binary(max_size=64)) + text.encode("utf-8", "surrogatepass")
    elif mutation == "text":
        text = draw(st.text(max_size=64))
    return text.encode("utf-8", "surrogatepass")


def _check_config(make):
    start = time.perf_counter()
    try:
        cfg = make()
    except ConfigError as exc:
        assert str(exc)
        assert len(str(exc)) < 2000, "an error message should be one readable line"
    else:
        assert isinstance(cfg, C.RunConfig)
        assert C.from_dict(C.to_dict(cfg)) == cfg  # a sane, re-loadable result
        assert C.tomllib.loads(C.to_toml(cfg))  # and it writes valid TOML
    assert time.perf_counter() - start < PER_EXAMPLE_S


@fuzz(600)
@given(doc=toml_docs())
def test_fuzz_load_config_file(scratch, doc):
    path = scratch / "c.toml"
    path.write_bytes(doc)
    _check_config(lambda: C.load_config(path))


@st.composite
def overrides(draw):
    kind = draw(st.sampled_from(["valid_key"] * 4 + ["any_key", "garbage", "deep"]))
    if kind == "garbage":
        return draw(st.text(max_size=40))
    section = draw(st.sampled_from(SECTION_NAMES))
    key = draw(st.sampled_from(_keys(section) or ALL_KEYS)) if kind != "any_key" else draw(weird_text)
    if kind == "deep":
        depth = draw(st.sampled_from([50, 1000, 10000]))
        raw = draw(st.sampled_from(["[", "{a=", "[{a=", "{a=["])) * depth
    elif draw(st.booleans()):
        raw = toml_value(draw(values))
    else:
        raw = draw(weird_text)
    return f"{section}.{key}{draw(st.sampled_from(['=', ' = ', '==']))}{raw}"


@fuzz(700)
@given(sets=st.lists(overrides(), min_size=1, max_size=3))
def test_fuzz_set_overrides(sets):
    _check_config(lambda: C.load_config(overrides=sets))


@pytest.mark.parametrize("text", ["train.device=" + "={a" * 1000, "x" * 5000, "train." + "y" * 5000 + ".z=1"])
def test_long_override_values_give_a_short_error(text):
    """Found by the fuzzer in CI: a device string that is not TOML was echoed whole, 3,055 characters long."""
    _check_config(lambda: C.load_config(overrides=[text]))


class HugeInt(int):
    """10**5000 (too many digits for `str`) with a repr hypothesis can print."""

    def __repr__(self) -> str:
        return "10**5000"


mapping_keys = st.one_of(st.sampled_from(ALL_KEYS), weird_text, st.integers(), st.none(), st.tuples(st.integers()))
nested = st.recursive(
    st.one_of(scalars, st.none(), st.just(HugeInt(10**5000))),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner) | st.dictionaries(mapping_keys, inner, max_size=3),
    max_leaves=8)


@st.composite
def config_mappings(draw):
    kind = draw(st.sampled_from(["sections"] * 4 + ["any"]))
    if kind == "any":
        return draw(nested)
    out = {}
    for section in draw(st.lists(st.sampled_from(SECTION_NAMES + [1, None]), max_size=4, unique=True)):
        if draw(st.integers(0, 7)) == 0:
            out[section] = draw(nested)
            continue
        keys = _keys(section) if isinstance(section, str) else []
        out[section] = {draw(st.sampled_from(keys or ALL_KEYS)) if draw(st.integers(0, 5)) else draw(mapping_keys):
                        draw(nested) for _ in range(draw(st.integers(0, 4)))}
    return out


@fuzz(450)
@given(mapping=config_mappings())
def test_fuzz_from_dict(mapping):
    _check_config(lambda: C.from_dict(mapping))


def test_config_regressions(tmp_path):
    """Each of these used to escape as ValueError, OverflowError, RecursionError, TypeError or AttributeError."""
    digits = "9" * 5000
    bad_sets = [f"train.lr={digits}", f"train.epochs={digits}", "train.lr=" + "9" * 400,
                "train.lr=" + "[" * 5000 + "]" * 5000, "data.dataset=" + "{a=" * 5000]
    for text in bad_sets:
        with pytest.raises(ConfigError):
            C.load_config(overrides=[text])
    for doc in (f"[train]\nlr = {digits}\n", "[train]\nlr = " + "[" * 5000 + "\n", f"[train]\nlr = {10**400}\n"):
        (tmp_path / "c.toml").write_text(doc)
        with pytest.raises(ConfigError) as info:
            C.load_config(tmp_path / "c.toml")
        assert len(str(info.value)) < 300
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    for mapping in ({"train": {1: 2}}, [1], None, {"train": {"epochs": 10**5000}}, {"train": {"lr": 10**5000}},
                    {"data": {"dataset": deep}}, {"data": {"dataset": "x" * 10**6 + "\x00"}, "model": {"kind": deep}}):
        with pytest.raises(ConfigError) as info:
            C.from_dict(mapping)
        assert len(str(info.value)) < 2000
    assert C.load_config(overrides=["train.lr=1"]).train.lr == 1.0  # exact ints still become floats


def test_folder_size_change_after_headers_is_a_data_error(tmp_path, monkeypatch):
    """Sizes are predicted from headers; if decoding disagrees (rotation the header pass did not see),
    the mismatch is refused by name instead of escaping from numpy.stack as ValueError."""
    from PIL import Image

    from vaelab.data import sources

    for name in ("a.png", "b.png"):
        Image.new("L", (4, 8)).save(tmp_path / name)
    real = sources._to_8bit
    monkeypatch.setattr(sources, "_to_8bit",
                        lambda img: real(img).transpose(Image.Transpose.ROTATE_90)
                        if img.filename.endswith("b.png") else real(img))
    with pytest.raises(DataError, match="different sizes.*b.png"):
        load_folder(str(tmp_path), None, None, "resize")
    assert load_folder(str(tmp_path), 4, None, "resize").train_images.shape == (2, 1, 4, 4)
