"""The latent explorer's logic, without HTTP: `ExplorerApp(run, splits)`.

Plain methods, one per endpoint, that take typed values and return JSON-ready dicts, images as PNG
data URIs at the model's own size (the page enlarges them). They validate every value (`RequestError`
carries the HTTP status) and run all torch work under one lock, since a module is not safe to call
from two threads. Testable without a socket; `vaelab.serve.http` puts it behind a server.

The model is used through the `Model` protocol only (`vaelab.models.base`): `code`, `decode_mean`,
`variational`, and the run's `sample`; any model vaelab can train, the user's own included, is explored
the same way. What uploads are compared with is in `vaelab.serve.reference`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any, Callable

import numpy as np
import torch

from vaelab.data import DatasetSplits, to_float
from vaelab.errors import DataError
from vaelab.evaluation.imagecheck import user_image  # uploads: prepared and seeded as `vaelab check` does
from vaelab.evaluation.oodrun import RunDose, dose_problem, model_tag, run_dose, statistics_kwargs
from vaelab.evaluation.typicality import check_score_set
from vaelab.evaluation.unseen import has_likelihood
from vaelab.models import eval_mode
from vaelab.models.generate import latent_frame, lerp, slerp
from vaelab.runs import Run
from vaelab.serve.images import decode_upload, png_data_uri
from vaelab.serve.limits import (DEFAULT_K, DEFAULT_REFERENCE, MAX_BODY, MAX_SAMPLES, MAX_SEED, MAX_SET, MAX_STEPS,
                                 MAX_TEMPERATURE, MAX_THUMBNAILS, RequestError, TRAVERSE_RANGE, check_limits,
                                 check_range, shown)
from vaelab.serve.reference import (UNUSUAL_PERCENTILE, VAL_REFERENCE, Reference, Scoring, check, percentile,
                                    reference_images, summary, worst_verdict)


class ExplorerApp:
    """The explorer's logic, without HTTP: every method validates its values and returns a JSON-ready dict.

    >>> app = ExplorerApp(load_run("runs/my-vae"), splits)      # doctest: +SKIP
    >>> app.samples(n=8, temperature=0.8, seed=1)["images"][0]   # 'data:image/png;base64,...'
    """

    def __init__(self, run: Run, splits: DatasetSplits, *, k: int = DEFAULT_K,
                 reference_images: int = DEFAULT_REFERENCE, seed: int = 0,
                 log: Callable[[str], None] | None = None) -> None:
        check_limits(k, reference_images)
        if splits.image_shape != run.image_shape:
            have, want = ("x".join(map(str, s)) for s in (splits.image_shape, run.image_shape))
            raise DataError(f"the data has images of shape {have} but the run was trained on {want}; "
                            "give the run's own dataset")
        if not len(splits.train) or not len(splits.test):
            raise DataError(f"{splits.name} needs training and test images for the explorer's references")
        self.run = run
        self.splits = splits
        self.k = k
        self.seed = seed
        self.model = run.model
        self.cfg = run.config
        self.kind = self.cfg.model.kind  # shown to the user (info, the CLI's first line); nothing branches on it
        self.has_likelihood = bool(self.model.variational and has_likelihood(self.cfg))
        self.binary = self.cfg.data.binarize != "none"
        self.log = log or (lambda message: None)
        self.dose, self.dose_note = self._load_dose()
        self.scoring = Scoring(self.model, run.device, self.has_likelihood, k, self.binary, self.dose,
                               statistics_kwargs(self.cfg, model_tag(self.model)) if self.dose else {})
        self.lock = threading.Lock()  # torch modules are not re-entrant across threads
        self._score_references(reference_images)

    def _load_dose(self) -> tuple[RunDose | None, str]:
        """The run's DoSE scorer (read from RUN/ood/, or fitted on validation images and kept there), or why
        there is none."""
        if not self.has_likelihood:
            return None, "no DoSE score: the model has no likelihood"
        problem = dose_problem(self.cfg, self.splits)
        if problem:
            return None, problem
        return run_dose(self.model, self.cfg, self.splits, self.run.path, device=self.run.device, log=self.log), ""

    def _score_references(self, n: int) -> None:
        started = time.perf_counter()
        dc = self.cfg.data
        train_images, train_scored = reference_images(self.splits.train, "train", n, self.seed + 1, dc)
        test_images, test_scored = reference_images(self.splits.test, "test", n, self.seed + 2, dc)
        with self.lock:
            train, codes, _ = self.scoring.measure(train_images, train_scored, dose=False)
            test, _, _ = self.scoring.measure(test_images, test_scored, dose=False)
            val = None
            if len(self.splits.val):
                n_val = max(n, VAL_REFERENCE)  # enough to resolve the flagging percentile
                val = self.scoring.measure(*reference_images(self.splits.val, "val", n_val, self.seed + 3, dc),
                                           dose=False)[0]
            # the units of traversals and activity, shared with the HTML report (the VampPrior's: the codes')
            self.frame = latent_frame(self.model, codes)
            self.activity = self._activity(codes)
        self.reference = Reference(train, test, time.perf_counter() - started, val,
                                   self.dose.reference if self.dose is not None else None)

    # ------------------------------------------------------------------ helpers (call under self.lock)

    def _activity(self, codes: torch.Tensor) -> list[float]:
        """Variance of each latent dimension's code over the training reference, in the frame's units:
        near 0 = a dimension the encoder ignores (moving along it changes little)."""
        var = codes.double().var(0).cpu()
        scale = self.frame.scale
        return [float(v) for v in (var / scale.double().cpu() ** 2)]

    def _code_of(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.code(to_float(images, self.run.device))

    def _test_image(self, index: int, name: str) -> torch.Tensor:
        n = len(self.splits.test)
        if not 0 <= index < n:
            raise RequestError(400, f"{name} must be a test image index from 0 to {n - 1}, got {index}")
        return self.splits.test.images[index:index + 1]

    def _label(self, index: int) -> str:
        label = int(self.splits.test.labels[index])
        classes = self.splits.classes
        return classes[label] if 0 <= label < len(classes) else str(label)

    # ------------------------------------------------------------------ endpoints

    def info(self) -> dict[str, Any]:
        """What the page needs to lay itself out: the model, the limits, the references."""
        c, h, w = self.run.image_shape
        ref = self.reference
        return {
            "run": self.run.path.name, "kind": self.kind, "arch": self.cfg.model.arch,
            "dataset": self.splits.name, "image_shape": [c, h, w], "latent_dim": self.model.latent_dim,
            "epoch": self.run.meta.get("epoch"), "likelihood": self.has_likelihood,
            "binarized": self.binary, "k": self.k if self.has_likelihood else None,
            "test_images": len(self.splits.test), "activity": self.activity, "traverse_units": self.frame.units,
            "limits": {"max_samples": MAX_SAMPLES, "max_temperature": MAX_TEMPERATURE, "max_steps": MAX_STEPS,
                       "max_thumbnails": MAX_THUMBNAILS, "traverse_range": TRAVERSE_RANGE, "max_body": MAX_BODY,
                       "max_set": MAX_SET},
            "reference": {"train_images": len(ref.train.recon_error), "test_images": len(ref.test.recon_error),
                          "seconds": round(ref.seconds, 3), "train_nll": summary(ref.train.nll),
                          "test_ood": summary(ref.test.ood), "train_recon_error": summary(ref.train.recon_error)},
            "unusual_percentile": UNUSUAL_PERCENTILE,
            "dose": self._dose_info(),
        }

    def _dose_info(self) -> dict[str, Any]:
        ref = self.reference
        info: dict[str, Any] = {"available": self.dose is not None, "note": self.dose_note,
                                "val_images": len(ref.val.recon_error) if ref.val is not None else 0,
                                "verdict_rule": f"unusual when any number shown is at or above the "
                                                f"{UNUSUAL_PERCENTILE:g}th percentile of in-distribution images"}
        if self.dose is not None:
            info |= {"density": self.dose.info["density"], "validation_images": len(self.dose.reference),
                     "held_out_scores": summary(self.dose.reference), "scorer": self.dose.info["scorer"]}
        return info

    def samples(self, n: int = 16, temperature: float = 1.0, seed: int = 0) -> dict[str, Any]:
        """n images from the prior (every layer's, for a hierarchical VAE), its std scaled by `temperature`."""
        check_range("n", n, 1, MAX_SAMPLES)
        check_range("temperature", temperature, 0, MAX_TEMPERATURE, low_open=True)
        check_range("seed", seed, 0, MAX_SEED)
        with self.lock:
            images = self.run.sample(n, temperature=temperature, seed=seed)
        return {"images": [png_data_uri(x) for x in images], "n": n, "temperature": temperature, "seed": seed}

    def test_images(self, offset: int = 0, n: int = 40) -> dict[str, Any]:
        """Thumbnails of test images to pick from, with their index and label."""
        total = len(self.splits.test)
        check_range("n", n, 1, MAX_THUMBNAILS)
        check_range("offset", offset, 0, max(total - 1, 0))
        rows = range(offset, min(offset + n, total))
        return {"total": total, "offset": offset,
                "images": [{"index": i, "label": self._label(i), "image": png_data_uri(self.splits.test.images[i])}
                           for i in rows]}

    def interpolate(self, a: int, b: int, t: float | None = None, steps: int | None = None,
                    method: str = "slerp") -> dict[str, Any]:
        """The decoded point at position t in [0, 1] on the path between the codes of test images a and b
        (posterior means), or the whole path in `steps` images."""
        if method not in ("lerp", "slerp"):
            raise RequestError(400, f"method must be lerp or slerp, got {shown(method)}")
        if (t is None) == (steps is None):
            raise RequestError(400, "give either t (one point, 0 to 1) or steps (the whole path)")
        if t is not None:
            check_range("t", t, 0.0, 1.0)
            ts = torch.tensor([t], dtype=torch.float32)
        else:
            check_range("steps", steps, 2, MAX_STEPS)
            ts = torch.linspace(0, 1, steps)
        pair = torch.cat([self._test_image(a, "a"), self._test_image(b, "b")])
        with self.lock, eval_mode(self.model):
            codes = self._code_of(pair)
            path = (lerp if method == "lerp" else slerp)(codes[0], codes[1], ts.to(codes.device))
            images = self.model.decode_mean(path)
        out: dict[str, Any] = {"a": a, "b": b, "method": method}
        if t is not None:
            return out | {"t": t, "image": png_data_uri(images[0])}
        return out | {"t": ts.tolist(), "images": [png_data_uri(x) for x in images]}

    def traverse(self, dim: int, value: float | None = None, steps: int | None = None,
                 base: int | None = None) -> dict[str, Any]:
        """Decode a code whose dimension `dim` is set to `value` prior standard deviations from the prior's
        centre, the other dimensions taken from `base`: the code of that test image, or (None) the centre.
        With `steps`, a row of values evenly spaced over [-TRAVERSE_RANGE, TRAVERSE_RANGE]."""
        check_range("dim", dim, 0, self.model.latent_dim - 1)
        if (value is None) == (steps is None):
            raise RequestError(400, "give either value (one point) or steps (a row of values)")
        if value is not None:
            check_range("value", value, -TRAVERSE_RANGE, TRAVERSE_RANGE)
            values = torch.tensor([value], dtype=torch.float32)
        else:
            check_range("steps", steps, 2, MAX_STEPS)
            values = torch.linspace(-TRAVERSE_RANGE, TRAVERSE_RANGE, steps)
        start = None if base is None else self._test_image(base, "base")
        with self.lock, eval_mode(self.model):
            centre, scale = self.frame.loc, self.frame.scale
            z = centre.clone() if start is None else self._code_of(start)[0]
            codes = z.repeat(len(values), 1)
            codes[:, dim] = centre[dim] + values.to(codes.device) * scale[dim]
            images = self.model.decode_mean(codes)
        out: dict[str, Any] = {"dim": dim, "base": "zero" if base is None else base}
        if value is not None:
            return out | {"value": value, "image": png_data_uri(images[0])}
        return out | {"values": values.tolist(), "images": [png_data_uri(x) for x in images]}

    def score_upload(self, data: bytes) -> dict[str, Any]:
        """Reconstruction, NLL, bits/dim and where an uploaded image falls against the training data."""
        if len(data) > MAX_BODY:
            raise RequestError(413, f"the upload is {len(data):,} bytes; send at most {MAX_BODY:,}")
        image = decode_upload(data, self.run.image_shape)
        scored, seed = user_image(self.run, image)
        with self.lock:
            m, _, recon = self.scoring.measure(image, scored, seeds=[seed])
        err = float(m.recon_error[0])
        out: dict[str, Any] = {
            "input": png_data_uri(image[0]), "scored": png_data_uri(scored[0]),
            "reconstruction": png_data_uri(recon[0]), "binarized": self.binary,
            "recon_error": err, "recon_error_percentile_train": percentile(err, self.reference.train.recon_error),
            "likelihood": self.has_likelihood,
        }
        ref = self.reference
        judge = self._judging_references()
        recon = check("reconstruction error", err, *judge["recon"])
        out["recon_error_percentile_val"] = recon["percentile"] if ref.val is not None else None
        if not self.has_likelihood:
            why = ("NLL is not defined for an autoencoder (it has no likelihood)" if not self.model.variational else
                   "NLL is not defined for a Bernoulli decoder trained on grey pixels")
            return out | {"nll": None, "note": why + "; judged by its reconstruction error instead",
                          **worst_verdict([recon], judge["note"])}
        nll, ood = float(m.nll[0]), float(m.ood[0])
        out |= {"k": self.k, "nll": nll, "bits_per_dim": nll / (math.prod(self.run.image_shape) * math.log(2)),
                "nll_percentile_train": percentile(nll, ref.train.nll), "png_bits": float(m.png_bits[0]),
                "ood_score": ood, "ood_percentile_test": percentile(ood, ref.test.ood), "dose_score": None,
                "dose_percentile_val": None}
        checks = []
        if m.dose is not None:  # the best score first: it names the verdict when several numbers tie
            out["dose_score"] = float(m.dose[0])
            checks.append(check("DoSE score", out["dose_score"], ref.dose, "validation images (held out of its fit)"))
            out["dose_percentile_val"] = checks[0]["percentile"]
        checks += [check("OOD score (NLL in bits minus PNG code length)", ood, *judge["ood"]),
                   check("NLL", nll, *judge["nll"]), recon]
        if ref.val is not None:
            out["ood_percentile_val"], out["nll_percentile_val"] = checks[-3]["percentile"], checks[-2]["percentile"]
        notes = "; ".join(n for n in (self.dose_note, judge["note"]) if n)
        return out | worst_verdict(checks, notes)

    def check_set(self, data: bytes) -> dict[str, Any]:
        """Several uploads judged as one set: the DoSE batch test (as `vaelab check` judges a set) on their DoSE
        scores, sent as JSON {"scores": [...]} (what /api/upload answered for each), against the held-out
        scores of the validation images."""
        if self.dose is None:
            raise RequestError(409, "this run has no DoSE score, so a set cannot be judged"
                                    + (f" ({self.dose_note})" if self.dose_note else ""))
        try:
            scores = json.loads(data.decode("utf-8"))["scores"]
        except (UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
            raise RequestError(400, 'send JSON {"scores": [...]}: the dose_score of each upload') from None
        if not isinstance(scores, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in scores):
            raise RequestError(400, '"scores" must be a list of finite numbers (the dose_score of each upload)')
        check_range("the number of scores", len(scores), 1, MAX_SET)
        result = check_score_set(self.dose.reference, np.asarray(scores, dtype=np.float64))
        verdict = ("not from the training distribution" if result.flagged
                   else "consistent with the training distribution")
        return {**result.as_dict(), "verdict": verdict,
                "validation_images": len(self.dose.reference),
                "flagged_one_by_one": int(np.count_nonzero(np.asarray(scores) >= self.dose.threshold()))}

    def _judging_references(self) -> dict[str, Any]:
        """What each number is judged against: validation images (held out of training, like an upload);
        a run without a validation split falls back on the training and test references, and says so."""
        ref = self.reference
        if ref.val is not None:
            val = ref.val
            return {"recon": (val.recon_error, "validation images"), "nll": (val.nll, "validation images"),
                    "ood": (val.ood, "validation images"), "note": ""}
        return {"recon": (ref.train.recon_error, "training images"), "nll": (ref.train.nll, "training images"),
                "ood": (ref.test.ood, "test images"),
                "note": "the run has no validation split: judged against training and test images"}
