"""Export a trained model's decoder and encoder to ONNX and TorchScript, for use without vaelab.

Each part becomes a plain graph with named inputs and outputs and a dynamic batch dimension:

    decoder   z (batch, latent_dim) float32      -> image (batch, C, H, W): the mean of p(x|z) in [0, 1]
                                                    (what `Run.decode` returns)
    encoder   image (batch, C, H, W) in [0, 1]   -> mean, logvar (batch, latent_dim): q(z|x) of a VAE
                                                    (the HVAE: of its top layer), or code for an autoencoder

The hierarchical VAE exports what its single-latent interface computes: the decoder maps a top-layer
code z_L (flattened) to an image with every lower layer at its conditional prior mean (deterministic, as
`Run.decode`, reconstructions and interpolations); the encoder gives q(z_L | x). The ancestral sampling
of `vaelab sample`, with noise in every layer, is not exported.

ONNX goes through `torch.onnx.export(dynamo=True)` (torch.export, then onnxscript): it exports every
model vaelab trains with a symbolic batch size, the logistic mixture's reshapes included. The legacy
TorchScript-based exporter (`dynamo=False`) records the mixture's channel count from the traced batch
(those files fail at any other batch size) and cannot write the decoder's `FoldConvTranspose2d` below
opset 18. In ONNX files that layer becomes the plain ConvTranspose it computes (same weights): a
standard operator every runtime has, which onnxruntime runs as fast as the matmul + Col2Im form.
TorchScript files come from `torch.jit.trace` (deprecated upstream but still what `torch.jit.load`
reads) and keep the fold form, faster in libtorch; the models have no data-dependent control flow, so
a trace is exact.

Before a file is written it is loaded back from its bytes (onnx.checker, onnxruntime; torch.jit.load)
and run on random inputs of batch sizes other than the export's; its outputs must match the PyTorch
model's within `TOLERANCE`, else `ExportError` (a vaelab bug, not a user mistake). Weights a graph does
not use (the encoder's in decoder.pt, the VampPrior's pseudo-inputs) are left out of it.

The package: `graphs` (the exportable modules, their inputs and outputs, what PyTorch computes), `formats`
(ONNX and TorchScript bytes, and running them), `manifest` (export.json); here, the whole export.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vaelab._version import __version__ as _VAELAB_VERSION
from vaelab.errors import ConfigError, DataError
from vaelab.export.formats import (FORMATS, MIN_OPSET, SUFFIX, TOLERANCE, VERIFY_BATCHES, max_abs_diff,
                                   require_onnx, run_onnx, run_torchscript, to_onnx, to_torchscript)
from vaelab.export.graphs import (EXAMPLE_BATCH, PARTS, DecoderGraph, EncoderGraph, ExportError, TensorSpec,
                                  build_graph, example_input, reference, tensor_specs)
from vaelab.export.manifest import (MANIFEST, ExportedFile, build_manifest, file_metadata, latent_description,
                                    model_arch, model_kind, stale_files, usage)
from vaelab.fileio import atomic_write
from vaelab.log import say
from vaelab.models import Model
from vaelab.runs import load_run, write_json


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: list[ExportedFile]
    manifest: dict[str, Any] = field(repr=False)


def verify(run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], model: Model, part: str, label: str,
           tolerance: float = TOLERANCE) -> float:
    """Run an exported file on random inputs of each of VERIFY_BATCHES and compare with PyTorch; the largest
    difference, or ExportError when it exceeds `tolerance`."""
    worst = 0.0
    for seed, batch in enumerate(VERIFY_BATCHES, start=1):
        x = example_input(model, part, batch, seed)
        diff = max_abs_diff(run(x), reference(model, part, x))
        if not diff <= tolerance:
            raise ExportError(f"the exported {label} disagrees with PyTorch on a batch of {batch}: max abs diff "
                              f"{diff:.3g} > {tolerance:g}; this is a vaelab bug, please report it (nothing written)")
        worst = max(worst, diff)
    return worst


def check_options(formats: Sequence[str], parts: Sequence[str], opset: int | None) -> None:
    """ConfigError for an unknown format or part, none of either, or an opset the exporter cannot write."""
    for values, known, what in ((formats, FORMATS, "format"), (parts, PARTS, "part")):
        choose = f"choose from {', '.join(known)}"
        if not values:
            raise ConfigError(f"no {what} given; {choose}")
        for i, value in enumerate(values):
            if value not in known:
                raise ConfigError(f"unknown {what} {value!r}; {choose}")
            if value in values[:i]:
                raise ConfigError(f"{what} {value!r} is given twice; name each {what} once")
    if opset is not None:
        if "onnx" not in formats:
            raise ConfigError("--opset applies to ONNX files only; add --format onnx or leave it out")
        require_onnx()  # its one-line error, not an ImportError, when the extra is missing
        import onnx

        newest = onnx.defs.onnx_opset_version()
        if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
            raise ConfigError(f"--opset must lie between {MIN_OPSET} and {newest} (this onnx's newest), got {opset}")


def prepare_out(out: str | Path) -> Path:
    """The output directory, created; DataError if something that is not a directory is in the way."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _export_file(model: Model, part: str, fmt: str, out: Path, opset: int | None,
                 metadata: dict[str, str]) -> ExportedFile:
    """Build `part`'s graph in format `fmt`, check it against PyTorch, and write it into `out`."""
    inputs, outputs = tensor_specs(model, part)
    example = example_input(model, part, EXAMPLE_BATCH)
    start = time.perf_counter()
    graph = build_graph(model, part, fmt)
    path = out / f"{part}{SUFFIX[fmt]}"
    if fmt == "onnx":
        data = to_onnx(graph, example, inputs, outputs, opset, metadata)
        diff = verify(lambda x: run_onnx(data, inputs, outputs, x), model, part, path.name)
    else:
        data = to_torchscript(graph, example, metadata)
        diff = verify(lambda x: run_torchscript(data, x), model, part, path.name)
    atomic_write(path, data, f"the exported {part}")
    seconds = time.perf_counter() - start
    return ExportedFile(part, fmt, path, len(data), hashlib.sha256(data).hexdigest(), seconds, diff)


def export_model(model: Model, out: str | Path, *, formats: Sequence[str] = FORMATS,
                 parts: Sequence[str] = PARTS, opset: int | None = None, info: dict[str, Any] | None = None,
                 log: Callable[[str], None] = say) -> ExportResult:
    """Export `parts` of `model` in `formats` into the directory `out`, check each file against PyTorch,
    and write the manifest export.json (`info` adds to it: the run, checkpoint, config)."""
    check_options(formats, parts, opset)
    versions = {"vaelab": _VAELAB_VERSION, "torch": torch.__version__}
    if "onnx" in formats:
        versions.update(require_onnx())
    out = prepare_out(out)
    files: list[ExportedFile] = []
    specs: dict[str, Any] = {}
    for part in parts:
        inputs, outputs = tensor_specs(model, part)
        specs[part] = {"inputs": [asdict(s) for s in inputs], "outputs": [asdict(s) for s in outputs]}
        metadata = file_metadata(model, part, versions)
        for fmt in formats:
            f = _export_file(model, part, fmt, out, opset, metadata)
            files.append(f)
            log(f"wrote {f.path} ({f.bytes / 1e6:.2f} MB, {f.seconds:.1f} s; max |{fmt} - PyTorch| "
                f"{f.max_abs_diff:.1e} on batches of {' and '.join(map(str, VERIFY_BATCHES))})")
    for path in stale_files(out, files):
        log(f"note: {path} is left from an earlier export; export.json does not describe it")
    manifest = build_manifest(model, formats, parts, opset, versions, specs, files, info or {})
    write_json(out / MANIFEST, manifest)
    log(f"wrote {out / MANIFEST}")
    return ExportResult(out, files, manifest)


def export_run(path: str | Path, checkpoint: str = "best", out: str | Path | None = None, *,
               formats: Sequence[str] = FORMATS, parts: Sequence[str] = PARTS, opset: int | None = None,
               log: Callable[[str], None] = say) -> ExportResult:
    """Export a trained run's decoder and encoder (default into RUN/export/); see `export_model`."""
    check_options(formats, parts, opset)  # a typo fails before the checkpoint is read
    run = load_run(path, checkpoint=checkpoint, device="cpu")
    data = run.config.data
    info = {"run": str(run.path), "checkpoint": checkpoint, "epoch": run.meta.get("epoch"),
            "data": {"dataset": data.dataset, "image_size": data.image_size, "resize": data.resize,
                     "channels": data.channels, "binarize": data.binarize,
                     "note": "the encoder expects images prepared as in training: this size and channel count, "
                             "8-bit values / 255"}}
    return export_model(run.model, out if out is not None else run.path / "export", formats=formats, parts=parts,
                        opset=opset, info=info, log=log)


__all__ = [
    "EXAMPLE_BATCH", "FORMATS", "MANIFEST", "MIN_OPSET", "PARTS", "SUFFIX", "TOLERANCE", "VERIFY_BATCHES",
    "DecoderGraph", "EncoderGraph", "ExportError", "ExportResult", "ExportedFile", "TensorSpec", "build_graph",
    "build_manifest", "check_options", "example_input", "export_model", "export_run", "latent_description",
    "max_abs_diff", "model_arch", "model_kind", "prepare_out", "reference", "require_onnx", "run_onnx",
    "run_torchscript", "tensor_specs", "to_onnx", "to_torchscript", "usage", "verify",
]
