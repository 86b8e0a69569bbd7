"""Coverage-guided fuzzing (atheris / libFuzzer) of vaelab's three readers of untrusted input.

Targets (the same entry points as tests/test_fuzz.py):
  idx     vaelab.data.idx.read_idx / read_idx_header on one file (raw or gzipped)
  folder  vaelab.data.sources.load_folder on a folder of 1-3 files with image names
  config  vaelab.config.load_config on a TOML file, and on a `--set` override

Any exception other than vaelab's documented errors (VaelabError) is a crash;
atheris then stops and writes the input to crash-<hash>. atheris is NOT a
vaelab dependency: install it beside vaelab in a throwaway environment, e.g.

    python -m venv /tmp/atheris-venv && /tmp/atheris-venv/bin/pip install atheris
    PYTHONPATH=.venv/lib/python3.11/site-packages:src \\
        /tmp/atheris-venv/bin/python bench/fuzz_atheris.py idx -max_total_time=120

Arguments after the target go to libFuzzer (-runs=N, -max_total_time=S,
corpus directories, ...). A small seed corpus of valid inputs is written to a
temporary directory and used when no corpus directory is given. libFuzzer's
last line, "Done N runs in S second(s)", gives the count.
"""

from __future__ import annotations

import io
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["vaelab", "tomllib", "PIL", "gzip"]):
    import numpy as np
    from PIL import Image

    from vaelab import config as C
    from vaelab.data.idx import read_idx, read_idx_header, write_idx
    from vaelab.data.sources import load_folder
    from vaelab.errors import VaelabError

WORK = Path(tempfile.mkdtemp(prefix="vaelab-atheris-"))
RUNS = 0
EXTENSIONS = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".PNG", ".txt"]


def fuzz_idx(data: bytes) -> None:
    path = WORK / "f.idx"
    path.write_bytes(data)
    try:
        read_idx_header(path)
    except VaelabError:
        pass
    try:
        read_idx(path, expected_ndim=None)
    except VaelabError:
        pass


def fuzz_folder(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    root = WORK / f"imgs{RUNS}"
    root.mkdir()
    try:
        for i in range(fdp.ConsumeIntInRange(1, 3)):
            sub = ["", "a/", "b/"][fdp.ConsumeIntInRange(0, 2)]
            ext = EXTENSIONS[fdp.ConsumeIntInRange(0, len(EXTENSIONS) - 1)]
            size = fdp.ConsumeIntInRange(0, 4096)
            p = root / f"{sub}{i}{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(fdp.ConsumeBytes(size))
        image_size = [None, 4, 8, 13][fdp.ConsumeIntInRange(0, 3)]
        channels = [None, 1, 3][fdp.ConsumeIntInRange(0, 2)]
        resize = ["resize", "pad"][fdp.ConsumeIntInRange(0, 1)]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                load_folder(str(root), image_size, channels, resize)
        except VaelabError:
            pass
    finally:
        for p in sorted(root.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        root.rmdir()


def fuzz_config(data: bytes) -> None:
    path = WORK / "c.toml"
    path.write_bytes(data)
    try:
        C.load_config(path)
    except VaelabError:
        pass
    try:
        C.load_config(overrides=[data.decode("utf-8", "replace")])
    except VaelabError:
        pass


TARGETS = {"idx": fuzz_idx, "folder": fuzz_folder, "config": fuzz_config}


def seeds(target: str) -> Path:
    """A few valid inputs for libFuzzer to mutate."""
    d = WORK / f"seeds-{target}"
    d.mkdir()
    if target == "idx":
        rng = np.random.default_rng(0)
        write_idx(d / "images", rng.integers(0, 256, (3, 4, 4), dtype=np.uint8))
        write_idx(d / "labels.gz", np.arange(3, dtype=np.uint8), compress=True)
        write_idx(d / "floats", np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3))
    elif target == "folder":
        for fmt, mode in (("PNG", "L"), ("JPEG", "RGB"), ("BMP", "RGB"), ("WEBP", "RGBA"), ("PNG", "I;16")):
            buf = io.BytesIO()
            Image.new(mode, (5, 3)).save(buf, fmt)
            blob = buf.getvalue()
            # the layout fuzz_folder consumes: file count, sub-folder, extension, size (ints are read
            # from the end of the input by FuzzedDataProvider), then the file's bytes
            (d / f"{fmt}-{mode.replace(';', '')}").write_bytes(blob + struct.pack("<H", len(blob)) + b"\x00\x00\x00")
    else:
        (d / "a.toml").write_text('[data]\ndataset = "digits"\nimage_size = 16\n[train]\nepochs = 2\nlr = 1e-3\n'
                                  '[model]\nconv_channels = [8, 16]\nkind = "ae"\n')
        (d / "b.set").write_text("train.epochs=5")
        (d / "c.set").write_text('data.dataset="folder:x"')
    return d


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = sys.argv.pop(1)
    fn = TARGETS[target]

    def one_input(data: bytes) -> None:
        global RUNS
        RUNS += 1
        fn(data)

    args = sys.argv
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = WORK / f"corpus-{target}"
        corpus.mkdir()
        args = args + [str(corpus), str(seeds(target))]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
