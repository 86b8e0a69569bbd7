"""A blind check of vaelab's OOD scores: image sets made after every choice of the scores was fixed.

    python bench/ood_blind.py RUN [--batch 1..9] [--images 1000] [--sets DIR] [--out bench/results/ood_blind.json]

The issue asks that the default score generalize to OOD sets nobody looked at while building it. The
sets of the BENCHMARKS tables (MNIST, digits, the shifts) were all looked at. This script makes six
other kinds of image, seeded, none of them seen by the DoSE statistics, the density's selection or the
orientation test's rule (all fixed before this script existed):

- letters: A-Z and a-z in the font Pillow bundles, 16 to 26 px, jittered and turned up to 15 degrees;
- shapes: one to three ellipses, rectangles or triangles, filled or outlined;
- gratings: sinusoidal stripes of random period (4 to 14 px), direction and phase;
- photos: grayscale crops of scikit-learn's two bundled photographs, shrunk 3 to 8 times;
- overlay: the brighter pixel of two of the run's test images (two garments, or two digits, at once);
- zoomed: the central half of a test image, enlarged twice.

A second batch (`--batch 2`) was written, and committed, before any result of the first was seen, and
kept sealed until a change made after seeing the first batch was fixed:

- symbols: ASCII punctuation and signs in Pillow's font, as the letters are drawn;
- scribbles: two to four strokes through three to six random points, 2 or 3 px wide;
- blobs: smooth random shapes (7x7 noise enlarged and stretched to the full gray range);
- checkers: checkerboards of 2 to 7 px squares at a random offset;
- shifted: a test image moved 7 to 10 px in a random direction (the rest black);
- silhouettes: a test image with every pixel above 30 set to white.

A third batch (`--batch 3`), committed before any score of it was seen, checks a change chosen after
seeing the first two (the orientation statistic added to the density's columns):

- lines: one to three straight lines, 1 to 4 px wide, from edge to edge;
- rings: one or two circles of random centre and radius, 1 to 3 px wide;
- dots: 5 to 30 white squares of 1 to 3 px;
- edges: the gradient magnitude of the photographs' crops (a line drawing of a photograph);
- mosaic: four test images shrunk to quarters, side by side;
- rotated45: a test image turned 45 degrees (not one of the grid's symmetries).

A fourth batch (`--batch 4`), committed before any score of it was seen, checks whatever is changed
after the third (sets near the training distribution, most of them made from its own test images):

- pixelated: a test image shrunk to 7x7 and enlarged back with square pixels (blocks of 4x4);
- blurred: a test image under a Gaussian blur of radius 1.5 to 2.5 px;
- speckled: a test image with 4 to 10% of its pixels set to black or white at random;
- chimera: the left half of one test image beside the right half of another;
- occluded: a test image with a black square of 10 to 14 px at a random place;
- spirals: one Archimedean spiral of 2 to 4 turns, 1 or 2 px wide, of random centre and direction.

A fifth batch (`--batch 5`), committed before any score of it was seen, checks whatever is changed after
the fourth:

- jpeg: a test image saved as JPEG at quality 3 to 10 and read back;
- dimmed: a test image with every grey level scaled by 0.35 to 0.6;
- grainy: a test image plus Gaussian noise of standard deviation 25 to 45 grey levels, clipped;
- warped: a test image under a smooth random displacement field (up to about 3 px);
- rolled: a test image rolled cyclically by half its height (top and bottom halves swapped);
- stars: one or two five-pointed stars, filled or outlined.

A sixth batch (`--batch 6`), committed before any score of it was seen and left unscored, is kept sealed
for whatever is changed after the fifth:

- dilated: a test image under a 3x3 maximum filter (strokes and shapes thickened);
- eroded: a test image under a 3x3 minimum filter (thinned);
- mirrored: a test image's left half mirrored onto its right half;
- patched: a test image with a square of 8 to 12 px of uniform noise pasted at a random place;
- hatching: parallel lines about 1 px wide, 3 to 6 px apart, at a random angle, inside a random ellipse;
- words: two to four letters side by side in Pillow's font, 9 to 12 px high.

A seventh batch (`--batch 7`), committed before any score of it was seen, checked the change after the
sixth (the DoSE batch test's pooling; BENCHMARKS.md, seventh measurement):

- sheared: a test image under a horizontal shear of 0.3 to 0.6 (either way), about its centre;
- tiled: a test image shrunk to half its size and repeated 2x2;
- swapped: a test image's four quadrants in a random order other than their own;
- outlines: a test image's outlines (a 3x3 maximum filter minus a 3x3 minimum filter);
- fans: 3 to 8 straight rays, 1 or 2 px wide, from one point of the image to its edges;
- squeezed: a test image narrowed to 45-70% of its width, centred on black.

An eighth batch (`--batch 8`), committed before any score of it was seen, checked the change after the
seventh (the DoSE batch test's union of two poolings; BENCHMARKS.md, eighth measurement):

- framed: a test image inside a white frame 1 or 2 px wide at its border;
- ghosted: a test image and a copy shifted by 3 to 6 px, their maximum;
- halfinverted: a test image with its top or bottom half inverted (255 - v);
- masked: a test image multiplied by a checkerboard of 4 to 7 px cells (every other cell black);
- clouds: smoothed uniform noise (a Gaussian blur of radius 2 to 4 px, contrast stretched);
- crosses: two to five + or x marks, 5 to 11 px across, 1 or 2 px wide.

A ninth batch (`--batch 9`), committed before any score of it was seen and left unscored, is kept sealed
for whatever is changed after the eighth:

- shrunk: a test image shrunk to 40-60% of its size, centred on black;
- scanlines: a test image with every 2nd, 3rd or 4th row set to black;
- brightened: a test image's grey levels raised to a power of 0.3 to 0.5 (dark greys made light);
- sliced: a test image cut at a random row, its lower part moved 4 to 8 px sideways (wrapping around);
- lattice: two families of parallel lines 1 px wide, 4 to 8 px apart, at random angles;
- barcodes: vertical bars of random widths (1 to 3 px) and gaps across a band of random height.

Each set is written as a folder of PNG files (the run's image size, 8-bit gray) and scored the way a
user would: `vaelab evaluate RUN --on folder:DIR/letters ...` in a subprocess. The table is every score's
AUROC and FPR at 95% TPR against the run's test split, and the share flagged at the 99th percentile of
the validation images' DoSE, then the typicality test's and the DoSE batch test's AUROC over disjoint
batches of M images (and the share of batches each flags). Writes JSON (bench/results/ood_blind.json by
default).

`--rejudge` judges the batches again without scoring anything: the DoSE batch test is recomputed by
today's code from the per-image DoSE scores the evaluation in SETS/eval-RUNNAME already holds and the
run's stored scorer (its held-out validation scores), and written back into that evaluation.json; the
per-image numbers and the typicality test stay as they were. For a change to the batch test alone.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from vaelab.runs.load import load_run, load_run_data
from _results import provenance, write_result  # bench/ is on sys.path when run as a script

SEED = 20261207
BATCHES = {1: ("letters", "shapes", "gratings", "photos", "overlay", "zoomed"),
           2: ("symbols", "scribbles", "blobs", "checkers", "shifted", "silhouettes"),
           3: ("lines", "rings", "dots", "edges", "mosaic", "rotated45"),
           4: ("pixelated", "blurred", "speckled", "chimera", "occluded", "spirals"),
           5: ("jpeg", "dimmed", "grainy", "warped", "rolled", "stars"),
           6: ("dilated", "eroded", "mirrored", "patched", "hatching", "words"),
           7: ("sheared", "tiled", "swapped", "outlines", "fans", "squeezed"),
           8: ("framed", "ghosted", "halfinverted", "masked", "clouds", "crosses"),
           9: ("shrunk", "scanlines", "brightened", "sliced", "lattice", "barcodes")}
FROM_TEST = ("overlay", "zoomed", "shifted", "silhouettes", "mosaic", "rotated45", "pixelated", "blurred",
             "speckled", "chimera", "occluded", "jpeg", "dimmed", "grainy", "warped", "rolled", "dilated", "eroded",
             "mirrored", "patched", "sheared", "tiled", "swapped", "outlines",
             "squeezed", "framed", "ghosted", "halfinverted", "masked", "shrunk", "scanlines", "brightened",
             "sliced")  # made from the run's test images
SCORES = ("DoSE", "DoSE density", "-log p(x)", "complexity-corrected")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SYMBOLS = "!?#$%&*+=<>@{}[]()/\\|~^"


def glyphs(rng: np.random.Generator, n: int, size: int, alphabet: str) -> list[Image.Image]:
    out = []
    for _ in range(n):
        font = ImageFont.load_default(size=int(rng.integers(16, 27)) * size / 28)
        glyph = Image.new("L", (2 * size, 2 * size), 0)
        draw = ImageDraw.Draw(glyph)
        draw.text((size, size), alphabet[rng.integers(len(alphabet))], fill=255, font=font, anchor="mm")
        glyph = glyph.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
        dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
        left, top = size // 2 - dx, size // 2 - dy
        out.append(glyph.crop((left, top, left + size, top + size)))
    return out


def drawn(rng: np.random.Generator, n: int, size: int, strokes: tuple[int, int],
          stroke: Callable[[ImageDraw.ImageDraw, np.random.Generator, int], None]) -> list[Image.Image]:
    """n black images, each with rng.integers(*strokes) strokes drawn by `stroke` (in white)."""
    out = []
    for _ in range(n):
        image = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(*strokes))):
            stroke(draw, rng, size)
        out.append(image)
    return out


def letters(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return glyphs(rng, n, size, LETTERS)


def symbols(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return glyphs(rng, n, size, SYMBOLS)


def _scribbles_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    points = [tuple(float(v) for v in p) for p in rng.uniform(3, size - 4, size=(int(rng.integers(3, 7)), 2))]
    draw.line(points, fill=255, width=int(rng.integers(2, 4)), joint="curve")


def scribbles(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (2, 5), _scribbles_stroke)


def blobs(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    out = []
    for _ in range(n):
        small = Image.fromarray(rng.uniform(0, 255, size=(7, 7)).astype(np.float32), "F")
        a = np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9)
        out.append(Image.fromarray(np.round(255 * a).astype(np.uint8), "L"))
    return out


def checkers(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        cell = int(rng.integers(2, 8))
        dy, dx = (int(v) for v in rng.integers(0, cell, size=2))
        board = (((yy + dy) // cell + (xx + dx) // cell) % 2) * 255
        out.append(Image.fromarray(board.astype(np.uint8), "L"))
    return out


def shifted(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    size = test.shape[-1]
    out = []
    for i in rng.choice(len(test), size=n, replace=False):
        angle, step = rng.uniform(0, 2 * math.pi), int(rng.integers(7, 11))
        dy, dx = int(round(step * math.sin(angle))), int(round(step * math.cos(angle)))
        moved = np.zeros((size, size), np.uint8)
        src = test[i][max(0, -dy):size - max(0, dy), max(0, -dx):size - max(0, dx)]
        moved[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
        out.append(Image.fromarray(moved, "L"))
    return out


def silhouettes(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.where(test[i] > 30, 255, 0).astype(np.uint8), "L")
            for i in rng.choice(len(test), size=n, replace=False)]


def _shapes_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    x0, y0 = rng.uniform(0, 0.6 * size, size=2)
    w, h = rng.uniform(0.25 * size, 0.6 * size, size=2)
    box = (float(x0), float(y0), float(min(x0 + w, size - 1)), float(min(y0 + h, size - 1)))
    fill, width = (255, 1) if rng.random() < 0.5 else (None, int(rng.integers(1, 4)))
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse(box, fill=fill, outline=255, width=width)
    elif kind == 1:
        draw.rectangle(box, fill=fill, outline=255, width=width)
    else:
        points = [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) / 2, box[1])]
        draw.polygon(points, fill=fill, outline=255, width=width)


def shapes(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 4), _shapes_stroke)


def gratings(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for _ in range(n):
        angle, period, phase = rng.uniform(0, math.pi), rng.uniform(4, 14), rng.uniform(0, 2 * math.pi)
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + phase)
        out.append(Image.fromarray(np.round(127.5 * (wave + 1)).astype(np.uint8), "L"))
    return out


def photos(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    from sklearn.datasets import load_sample_images  # bundled with scikit-learn: no download

    sources = [Image.fromarray(a).convert("L") for a in load_sample_images().images]
    out = []
    for _ in range(n):
        photo = sources[rng.integers(len(sources))]
        side = int(size * rng.uniform(3, 8))
        left = int(rng.integers(0, photo.width - side))
        top = int(rng.integers(0, photo.height - side))
        out.append(photo.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR))
    return out


def overlay(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    pairs = rng.choice(len(test), size=(n, 2), replace=True)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return [Image.fromarray(np.maximum(test[a], test[b]), "L") for a, b in pairs[:n]]


def zoomed(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    size = test.shape[-1]
    q = size // 4
    return [Image.fromarray(test[i], "L").crop((q, q, size - q, size - q)).resize((size, size), Image.BILINEAR)
            for i in rng.choice(len(test), size=n, replace=False)]


def _lines_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    a, b = rng.uniform(0, size - 1, size=2)
    ends = [(0.0, float(a)), (float(size - 1), float(b))] if rng.random() < 0.5 else \
        [(float(a), 0.0), (float(b), float(size - 1))]
    draw.line(ends, fill=255, width=int(rng.integers(1, 5)))


def lines(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 4), _lines_stroke)


def _rings_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, size=2)
    r = rng.uniform(0.15 * size, 0.45 * size)
    draw.ellipse((float(cx - r), float(cy - r), float(cx + r), float(cy + r)), outline=255,
                 width=int(rng.integers(1, 4)))


def rings(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 3), _rings_stroke)


def _dots_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    w = int(rng.integers(1, 4))
    y, x = (int(v) for v in rng.integers(0, size - w, size=2))
    draw.rectangle((x, y, x + w - 1, y + w - 1), fill=255)  # a filled w x w square


def dots(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (5, 31), _dots_stroke)


def edges(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    out = []
    for photo in photos(rng, n, size):
        a = np.asarray(photo, dtype=np.float64)
        gy, gx = np.gradient(a)
        g = np.hypot(gx, gy)
        out.append(Image.fromarray(np.round(255 * g / max(g.max(), 1e-9)).astype(np.uint8), "L"))
    return out


def mosaic(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    size = test.shape[-1]
    half = size // 2
    out = []
    for quad in rng.choice(len(test), size=(n, 4), replace=True):
        tiles = [np.asarray(Image.fromarray(test[i], "L").resize((half, half), Image.BILINEAR)) for i in quad]
        a = np.zeros((size, size), np.uint8)
        a[:half, :half], a[:half, half:2 * half], a[half:2 * half, :half], a[half:2 * half, half:2 * half] = tiles
        out.append(Image.fromarray(a, "L"))
    return out


def rotated45(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(test[i], "L").rotate(45 if rng.random() < 0.5 else -45, resample=Image.BILINEAR)
            for i in rng.choice(len(test), size=n, replace=False)]


def pixelated(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    size = test.shape[-1]
    return [Image.fromarray(test[i], "L").resize((size // 4, size // 4), Image.BILINEAR).resize((size, size),
                                                                                             Image.NEAREST)
            for i in rng.choice(len(test), size=n, replace=False)]


def blurred(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    from PIL import ImageFilter

    return [Image.fromarray(test[i], "L").filter(ImageFilter.GaussianBlur(float(rng.uniform(1.5, 2.5))))
            for i in rng.choice(len(test), size=n, replace=False)]


def edited(rng: np.random.Generator, n: int, test: np.ndarray,
           edit: Callable[[np.ndarray, np.random.Generator], np.ndarray]) -> list[Image.Image]:
    """n distinct test images, each a copy changed by `edit(copy, rng)` (which returns the image)."""
    return [Image.fromarray(edit(test[i].copy(), rng), "L") for i in rng.choice(len(test), size=n, replace=False)]


def _speckle(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hit = rng.random(a.shape) < rng.uniform(0.04, 0.10)
    a[hit] = np.where(rng.random(int(hit.sum())) < 0.5, 0, 255).astype(np.uint8)
    return a


def speckled(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _speckle)


def chimera(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    half = test.shape[-1] // 2
    pairs = rng.choice(len(test), size=(n, 2), replace=True)
    return [Image.fromarray(np.concatenate([test[a][:, :half], test[b][:, half:]], axis=1), "L") for a, b in pairs]


def _square_of(low: int, high: int, fill: Callable[[np.random.Generator, int], np.ndarray | int]):
    """An edit that pastes a w x w square (w from low to high) at a random place, filled by fill(rng, w)."""
    def edit(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w = int(rng.integers(low, high + 1))
        y, x = (int(v) for v in rng.integers(0, a.shape[-1] - w + 1, size=2))
        a[y:y + w, x:x + w] = fill(rng, w)
        return a
    return edit


def occluded(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _square_of(10, 14, lambda rng, w: 0))


def _spirals_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    cx, cy = rng.uniform(0.35 * size, 0.65 * size, size=2)
    turns, start, sign = rng.uniform(2, 4), rng.uniform(0, 2 * math.pi), 1 if rng.random() < 0.5 else -1
    t = np.linspace(0, 2 * math.pi * turns, 200)
    r = 0.45 * size * t / t[-1]
    points = [(float(cx + ri * math.cos(start + sign * ti)), float(cy + ri * math.sin(start + sign * ti)))
              for ri, ti in zip(r, t)]
    draw.line(points, fill=255, width=int(rng.integers(1, 3)))


def spirals(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 2), _spirals_stroke)


def jpeg(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    import io

    out = []
    for i in rng.choice(len(test), size=n, replace=False):
        buf = io.BytesIO()
        Image.fromarray(test[i], "L").save(buf, format="JPEG", quality=int(rng.integers(3, 11)))
        out.append(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return out


def dimmed(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.round(test[i] * rng.uniform(0.35, 0.6)).astype(np.uint8), "L")
            for i in rng.choice(len(test), size=n, replace=False)]


def grainy(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    def grain(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.clip(np.round(a + rng.normal(0, rng.uniform(25, 45), size=a.shape)), 0, 255).astype(np.uint8)
    return edited(rng, n, test, grain)


def _warp(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    size = a.shape[-1]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    field = []
    for _ in range(2):  # a 4x4 grid of displacements, enlarged smoothly to the image
        small = Image.fromarray(rng.uniform(-3, 3, size=(4, 4)).astype(np.float32), "F")
        field.append(np.asarray(small.resize((size, size), Image.BICUBIC), dtype=np.float64))
    y = np.clip(np.round(yy + field[0]), 0, size - 1).astype(int)
    x = np.clip(np.round(xx + field[1]), 0, size - 1).astype(int)
    return a[y, x]


def warped(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _warp)


def rolled(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(np.roll(test[i], test.shape[-2] // 2, axis=0), "L")
            for i in rng.choice(len(test), size=n, replace=False)]


def _stars_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, size=2)
    r, turn = rng.uniform(0.2 * size, 0.45 * size), rng.uniform(0, 2 * math.pi)
    points = [(float(cx + (r if k % 2 == 0 else 0.4 * r) * math.cos(turn + k * math.pi / 5)),
               float(cy + (r if k % 2 == 0 else 0.4 * r) * math.sin(turn + k * math.pi / 5))) for k in range(10)]
    if rng.random() < 0.5:
        draw.polygon(points, fill=255)
    else:
        draw.polygon(points, outline=255, width=int(rng.integers(1, 3)))


def stars(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 3), _stars_stroke)


def dilated(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    from PIL import ImageFilter

    return [Image.fromarray(test[i], "L").filter(ImageFilter.MaxFilter(3))
            for i in rng.choice(len(test), size=n, replace=False)]


def eroded(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    from PIL import ImageFilter

    return [Image.fromarray(test[i], "L").filter(ImageFilter.MinFilter(3))
            for i in rng.choice(len(test), size=n, replace=False)]


def _mirror(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    half = a.shape[1] // 2
    a[:, a.shape[1] - half:] = a[:, :half][:, ::-1]
    return a


def mirrored(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _mirror)


def patched(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _square_of(8, 12, lambda rng, w: rng.integers(0, 256, size=(w, w), dtype=np.uint8)))


def hatching(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for _ in range(n):
        angle, gap = rng.uniform(0, math.pi), int(rng.integers(3, 7))
        cy, cx = rng.uniform(0.35 * size, 0.65 * size, size=2)
        ry, rx = rng.uniform(0.25 * size, 0.45 * size, size=2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        lines = np.round(xx * math.cos(angle) + yy * math.sin(angle)).astype(int) % gap == 0
        out.append(Image.fromarray(np.where(inside & lines, 255, 0).astype(np.uint8), "L"))
    return out


def words(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    out = []
    for _ in range(n):
        font = ImageFont.load_default(size=int(rng.integers(9, 13)) * size / 28)
        text = "".join(LETTERS[j] for j in rng.integers(len(LETTERS), size=int(rng.integers(2, 5))))
        image = Image.new("L", (size, size), 0)
        ImageDraw.Draw(image).text((size / 2 + float(rng.uniform(-2, 2)), size / 2 + float(rng.uniform(-4, 4))),
                                   text, fill=255, font=font, anchor="mm")
        out.append(image)
    return out


def _shear(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    s = float(rng.uniform(0.3, 0.6)) * (1 if rng.random() < 0.5 else -1)
    c = a.shape[0] / 2
    image = Image.fromarray(a, "L").transform(a.shape[::-1], Image.AFFINE, (1, s, -s * c, 0, 1, 0),
                                              resample=Image.BILINEAR)
    return np.asarray(image).copy()


def sheared(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _shear)


def tiled(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    size = test.shape[-1]
    out = []
    for i in rng.choice(len(test), size=n, replace=False):
        small = Image.fromarray(test[i], "L").resize((size // 2, size // 2), Image.LANCZOS)
        tile = Image.new("L", (size, size), 0)
        for y in (0, size // 2):
            for x in (0, size // 2):
                tile.paste(small, (x, y))
        out.append(tile)
    return out


def _swap_quadrants(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h = a.shape[0] // 2
    quads = [a[:h, :h].copy(), a[:h, h:].copy(), a[h:, :h].copy(), a[h:, h:].copy()]
    order = np.arange(4)
    while (order == np.arange(4)).all():
        order = rng.permutation(4)
    for k, (y, x) in enumerate(((0, 0), (0, h), (h, 0), (h, h))):
        a[y:y + h, x:x + h] = quads[order[k]]
    return a


def swapped(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _swap_quadrants)


def outlines(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    from PIL import ImageChops, ImageFilter

    out = []
    for i in rng.choice(len(test), size=n, replace=False):
        image = Image.fromarray(test[i], "L")
        out.append(ImageChops.subtract(image.filter(ImageFilter.MaxFilter(3)), image.filter(ImageFilter.MinFilter(3))))
    return out


def _fans_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    cx, cy = (float(v) for v in rng.uniform(0.2 * size, 0.8 * size, size=2))
    width = int(rng.integers(1, 3))
    for angle in rng.uniform(0, 2 * math.pi, size=int(rng.integers(3, 9))):
        draw.line([(cx, cy), (cx + 2 * size * math.cos(angle), cy + 2 * size * math.sin(angle))], fill=255,
                  width=width)


def fans(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (1, 2), _fans_stroke)


def _smaller_on_black(rng: np.random.Generator, n: int, test: np.ndarray, low: float, high: float,
                      height_too: bool) -> list[Image.Image]:
    """n distinct test images, each resized to a random share in [low, high) of its width (and of its height
    when `height_too`) and centred on black."""
    size = test.shape[-1]
    out = []
    for i in rng.choice(len(test), size=n, replace=False):
        width = max(2, int(round(size * float(rng.uniform(low, high)))))
        height = width if height_too else size
        small = Image.fromarray(test[i], "L").resize((width, height), Image.LANCZOS)
        image = Image.new("L", (size, size), 0)
        image.paste(small, ((size - width) // 2, (size - height) // 2))
        out.append(image)
    return out


def squeezed(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return _smaller_on_black(rng, n, test, 0.45, 0.7, height_too=False)


def _frame(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    w = int(rng.integers(1, 3))
    a[:w, :], a[-w:, :], a[:, :w], a[:, -w:] = 255, 255, 255, 255
    return a


def framed(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _frame)


def _ghost(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = (int(v) * (1 if rng.random() < 0.5 else -1) for v in rng.integers(3, 7, size=2))
    return np.maximum(a, np.roll(a, (dy, dx), axis=(0, 1)))


def ghosted(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _ghost)


def _half_invert(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    half = slice(0, a.shape[0] // 2) if rng.random() < 0.5 else slice(a.shape[0] // 2, None)
    a[half] = 255 - a[half]
    return a


def halfinverted(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _half_invert)


def _mask(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cell = int(rng.integers(4, 8))
    yy, xx = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    a[((yy // cell) + (xx // cell)) % 2 == 1] = 0
    return a


def masked(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _mask)


def clouds(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    from PIL import ImageFilter

    out = []
    for _ in range(n):
        noise = Image.fromarray(rng.integers(0, 256, size=(size, size), dtype=np.uint8), "L")
        a = np.asarray(noise.filter(ImageFilter.GaussianBlur(float(rng.uniform(2, 4)))), dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9) * 255
        out.append(Image.fromarray(a.round().astype(np.uint8), "L"))
    return out


def _crosses_stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    cx, cy = (float(v) for v in rng.uniform(0.15 * size, 0.85 * size, size=2))
    r, width = float(rng.uniform(2.5, 5.5)), int(rng.integers(1, 3))
    if rng.random() < 0.5:
        draw.line([(cx - r, cy), (cx + r, cy)], fill=255, width=width)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=255, width=width)
    else:
        draw.line([(cx - r, cy - r), (cx + r, cy + r)], fill=255, width=width)
        draw.line([(cx - r, cy + r), (cx + r, cy - r)], fill=255, width=width)


def crosses(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    return drawn(rng, n, size, (2, 6), _crosses_stroke)


def shrunk(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return _smaller_on_black(rng, n, test, 0.4, 0.6, height_too=True)


def _scanlines(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    step = int(rng.integers(2, 5))
    a[int(rng.integers(0, step))::step] = 0
    return a


def scanlines(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _scanlines)


def _brighten(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.round(255 * (a / 255.0) ** float(rng.uniform(0.3, 0.5))).astype(np.uint8)


def brightened(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _brighten)


def _slice(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    row = int(rng.integers(a.shape[0] // 4, 3 * a.shape[0] // 4))
    shift = int(rng.integers(4, 9)) * (1 if rng.random() < 0.5 else -1)
    a[row:] = np.roll(a[row:], shift, axis=1)
    return a


def sliced(rng: np.random.Generator, n: int, test: np.ndarray) -> list[Image.Image]:
    return edited(rng, n, test, _slice)


def lattice(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for _ in range(n):
        a = np.zeros((size, size), dtype=bool)
        for _family in range(2):
            angle, period = float(rng.uniform(0, np.pi)), float(rng.uniform(4, 8))
            t = (xx * np.cos(angle) + yy * np.sin(angle) + float(rng.uniform(0, period))) % period
            a |= t < 1.0
        out.append(Image.fromarray(np.where(a, 255, 0).astype(np.uint8), "L"))
    return out


def barcodes(rng: np.random.Generator, n: int, size: int) -> list[Image.Image]:
    out = []
    for _ in range(n):
        a = np.zeros((size, size), dtype=np.uint8)
        height = int(rng.integers(size // 3, size - 3))
        top = int(rng.integers(1, size - height))
        x = int(rng.integers(1, 5))
        while x < size - 1:
            width = int(rng.integers(1, 4))
            a[top:top + height, x:min(x + width, size - 1)] = 255
            x += width + int(rng.integers(1, 4))
        out.append(Image.fromarray(a, "L"))
    return out


def make_sets(run_spec: str, folder: Path, n: int, batch: int = 1) -> dict[str, int]:
    """Writes folder/NAME/00000.png ...; returns the number of images of each set."""
    run = load_run(run_spec)
    test = load_run_data(run).test.images.numpy()
    if test.ndim != 4 or test.shape[1] != 1 or test.shape[2] != test.shape[3]:
        raise SystemExit(f"bench/ood_blind.py: needs a run on square gray images, not {tuple(test.shape[1:])}")
    test = test[:, 0].astype(np.uint8)
    size = test.shape[-1]
    made = {}
    for i, name in enumerate(BATCHES[batch]):
        rng = np.random.default_rng(SEED + 100 * (batch - 1) + i)
        make = globals()[name]
        images = make(rng, n, test) if name in FROM_TEST else make(rng, n, size)
        where = folder / name
        where.mkdir(parents=True, exist_ok=True)
        for old in where.glob("*.png"):
            old.unlink()
        for j, image in enumerate(images):
            image.save(where / f"{j:05d}.png")
        made[name] = len(images)
    return made


def default_eval_out(run: str, sets: Path) -> Path:
    """Where the batch's evaluation goes unless --eval-out says: SETS/eval-RUNNAME."""
    return sets / f"eval-{Path(run.replace(':', '-')).name}"


def evaluate_command(run: str, sets: Path, batch: int, images: int, settings: list[str],
                     eval_out: Path) -> list[str]:
    """The `vaelab evaluate` line that scores one batch's folders: OOD only (no NLL, no gap), IMAGES per
    set, then the user's own settings (KEY=VALUE each), so that theirs come last."""
    return ["vaelab", "evaluate", run, "--on", *[f"folder:{sets / name}" for name in BATCHES[batch]],
            "--nll-images", "0", "--set", "eval.gap_images=0", "--set", f"eval.ood_images={images}",
            *[a for kv in settings for a in ("--set", kv)], "--out", str(eval_out)]


def evaluation_scores(run_spec: str, settings: list[str], eval_out: Path) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """The run's config (with the evaluation's eval.* settings), its stored DoSE scorer (RunDose) and the
    full-precision DoSE score of every image eval_out's evaluation scored, by set ("test", "folder:..."):
    from its cached statistics, checked against the scores it printed (per_image_scores.csv, rounded)."""
    import csv

    from vaelab.config import apply_overrides
    from vaelab.errors import VaelabError
    from vaelab.evaluation.oodrun import run_dose
    from vaelab.evaluation.statistics import ImageStatistics

    run = load_run(run_spec)
    cfg = apply_overrides(run.config, settings)
    dose = run_dose(run.model, cfg, load_run_data(run), run.path, device=run.device)
    scores: dict[str, np.ndarray] = {}
    for path in sorted((eval_out / "statistics").glob("*.safetensors")):  # the evaluation's cached statistics
        stats = ImageStatistics.load(path)
        try:
            scores[stats.split] = dose.score(stats)  # full precision (per_image_scores.csv rounds)
        except VaelabError:  # statistics of another protocol (an older evaluation in the same folder)
            continue
    with open(eval_out / "per_image_scores.csv", newline="") as f:  # the check: the scores it printed
        printed: dict[str, list[float]] = {}
        for row in csv.DictReader(f):
            printed.setdefault(row["dataset"], []).append(float(row["DoSE"]))
    if sorted(scores) != sorted(printed) or not all(
            np.allclose(scores[k], printed[k], rtol=1e-4, atol=1e-4) for k in printed):
        raise SystemExit(f"bench/ood_blind.py: the statistics in {eval_out} do not give the scores it printed")
    return cfg, dose, scores


def rejudge(run_spec: str, settings: list[str], eval_out: Path) -> None:
    """The DoSE batch test again, by today's code, from eval_out's per-image DoSE scores and the run's stored
    scorer (with the evaluation's eval.* settings); written into eval_out/evaluation.json as "dose_batches"."""
    from vaelab.evaluation.typicality import score_batch_table

    cfg, dose, scores = evaluation_scores(run_spec, settings, eval_out)
    test = scores.pop("test")
    table = score_batch_table(dose.reference, test, scores, seed=cfg.eval.seed, resamples=cfg.eval.ood_resamples,
                              score="DoSE")
    path = eval_out / "evaluation.json"
    record = json.loads(path.read_text())
    record["datasets_eval"]["dose_batches"] = json.loads(json.dumps(table, default=float))
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"rejudged the DoSE batch test in {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run directory or pretrained:NAME")
    ap.add_argument("--batch", type=int, choices=sorted(BATCHES), default=1, help="which batch of sets")
    ap.add_argument("--images", type=int, default=1000, help="images per set (and of the test split)")
    ap.add_argument("--sets", default="bench/results/blind-sets", help="where the PNG folders are written "
                                                                       "(kept out of git)")
    ap.add_argument("--eval-out", default=None, help="the evaluation's folder (default: SETS/eval-RUNNAME)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to `vaelab evaluate` (repeatable), e.g. eval.dose_images=2000 to score with "
                         "the DoSE scorer the run's own tables were fitted with")
    ap.add_argument("--rejudge", action="store_true",
                    help="recompute the DoSE batch test from the evaluation already made (see above); score nothing")
    ap.add_argument("--out", default="bench/results/ood_blind.json")
    args = ap.parse_args(argv)
    sets = Path(args.sets).resolve()
    t0 = time.perf_counter()
    eval_out = Path(args.eval_out) if args.eval_out else default_eval_out(args.run, sets)
    command = evaluate_command(args.run, sets, args.batch, args.images, args.set, eval_out)
    if args.rejudge:
        made = {name: len(list((sets / name).glob("*.png"))) for name in BATCHES[args.batch]}
        rejudge(args.run, args.set, eval_out)
    else:
        made = make_sets(args.run, sets, args.images, args.batch)
        print("$", " ".join(command), flush=True)
        subprocess.run([str(Path(sys.executable).with_name("vaelab")), *command[1:]], check=True)
    result = json.loads((eval_out / "evaluation.json").read_text())["datasets_eval"]
    names = {spec: spec.rsplit("/", 1)[-1] for spec in result["ood"]}
    flagged = result["dose"].get("flagged_at_99", {})
    rows = []
    print(f"\n{'set':<10} {'n':>5} " + " ".join(f"{s + ' AUROC':>26}" for s in SCORES) + f" {'DoSE FPR@95':>12} "
          f"{'flagged':>8}")
    for spec, name in names.items():
        iv = result["ood_intervals"][spec]
        row = {"set": name, "n": made[name], "flagged_at_99": flagged.get(spec)}
        for score in SCORES:
            if score in iv:
                row[score] = {"auroc": iv[score]["auroc"], "fpr_at_95_tpr": iv[score]["fpr_at_95_tpr"],
                              "auprc": iv[score]["auprc"]}
        for key, label in (("typicality", "typicality"), ("dose_batches", "DoSE batch test")):
            batch_rows = result.get(key, {}).get("rows", {})
            row[label] = {m: {"flagged": r["sets"][spec]["flagged"], "auroc": r["sets"][spec]["auroc"]["value"],
                              "fpr_at_95_tpr": r["sets"][spec]["fpr_at_95_tpr"]["value"], "fpr_in": r["fpr_in"]}
                          for m, r in batch_rows.items() if spec in r["sets"]}
        rows.append(row)
        cells = " ".join(f"{row[s]['auroc']['value']:>26.3f}" if s in row else f"{'-':>26}" for s in SCORES)
        fpr = row["DoSE"]["fpr_at_95_tpr"]["value"]
        share = row["flagged_at_99"]
        print(f"{name:<10} {made[name]:>5} {cells} {fpr:>12.3f} {share if share is None else f'{share:.1%}':>8}")
    out = {"benchmark": "ood_blind", "run": args.run, **provenance("bench/ood_blind.py", argv),
           "evaluate": " ".join(command), "batch": args.batch, "seed": SEED, "sets": made, "rows": rows,
           "test_flagged_at_99": flagged.get("test"), "dose": result["dose"].get("orientation"),
           "seconds": round(time.perf_counter() - t0, 1)}
    for label in ("typicality", "DoSE batch test"):
        sizes = sorted(rows[0].get(label, {}), key=int) if rows else []
        if sizes:
            print(f"\n{label}: AUROC over disjoint batches of M images (flagged at its 99% level)")
            print(f"{'set':<12}" + "".join(f"{'M=' + m:>16}" for m in sizes))
            for row in rows:
                print(f"{row['set']:<12}" + "".join(f"{row[label][m]['auroc']:.3f} ({row[label][m]['flagged']:.2f})"
                                                     .rjust(16) for m in sizes))
    write_result(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
