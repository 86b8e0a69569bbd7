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
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from vaelab.log import say
from vaelab.errors import ConfigError, DataError
from vaelab.fileio import atomic_write
from vaelab.models import HVAE, VAE, Autoencoder, MLPEncoder, Model, eval_mode
from vaelab.models.conv import FoldConvTranspose2d

FORMATS = ("onnx", "torchscript")
PARTS = ("decoder", "encoder")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
MIN_OPSET = 18  # the dynamo exporter's lowest (older ones need a version conversion that may fail)
TOLERANCE = 1e-4  # largest |exported - PyTorch| accepted; float32 reordering gives about 1e-7
EXAMPLE_BATCH = 2  # the batch traced at export; 0 and 1 would be specialized by torch.export
VERIFY_BATCHES = (1, 5)  # batch sizes run in the check, unlike the traced one
MANIFEST = "export.json"


class ExportError(RuntimeError):
    """An exported graph failed to build, load or run, or disagrees with PyTorch: a vaelab bug."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of an exported graph."""

    name: str
    shape: list[int | str]  # "batch" is the dynamic dimension
    dtype: str
    meaning: str


@dataclass(frozen=True)
class ExportedFile:
    part: str  # decoder | encoder
    format: str  # onnx | torchscript
    path: Path
    bytes: int
    sha256: str
    seconds: float  # building and checking the file
    max_abs_diff: float  # largest |exported - PyTorch| over the check's inputs and outputs


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: list[ExportedFile]
    manifest: dict[str, Any] = field(repr=False)


# --------------------------------------------------------------------------- the graphs


class DecoderGraph(nn.Module):
    """z (batch, latent_dim) -> image (batch, C, H, W): the mean of p(x|z) in [0, 1], as `Run.decode`."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model.decode_mean(z)


class EncoderGraph(nn.Module):
    """image (batch, C, H, W) in [0, 1] -> (mean, logvar) of q(z|x), or the autoencoder's code."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        q = self.model.encode(image)
        return (q.mean, q.logvar) if self.model.variational else q


def build_graph(model: Model, part: str, fmt: str = "torchscript") -> nn.Module:
    """A CPU float32 copy of `model` wrapped as `part`'s graph for format `fmt`, in eval mode, without the
    weights it does not use and with no gradients (its outputs do not require grad in torch.jit.load either)."""
    copied = copy.deepcopy(model).cpu().float().to(memory_format=torch.contiguous_format)
    if fmt == "onnx":
        _plain_transposed_convs(copied)
    graph = (DecoderGraph if part == "decoder" else EncoderGraph)(copied).eval()
    _drop_unused_parameters(graph, example_input(model, part, EXAMPLE_BATCH))
    graph.requires_grad_(False)
    return graph


def _plain_transposed_convs(module: nn.Module) -> None:
    """Replace, in place, each FoldConvTranspose2d (matmul + col2im, a speed-up for oneDNN) by the plain
    nn.ConvTranspose2d it computes, with the same weights: ONNX then holds a standard ConvTranspose
    instead of MatMul + Col2Im (opset 18 and newer only, and missing from some runtimes)."""
    for name, child in list(module.named_children()):
        if isinstance(child, FoldConvTranspose2d):
            plain = nn.ConvTranspose2d(child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                                       padding=child.padding, output_padding=child.output_padding,
                                       groups=child.groups, bias=child.bias is not None, dilation=child.dilation,
                                       padding_mode=child.padding_mode)
            plain.load_state_dict(child.state_dict())
            setattr(module, name, plain)
        else:
            _plain_transposed_convs(child)


class _Dropped(nn.Module):
    """Stands in for a submodule whose weights the exported graph does not use."""

    def forward(self, *args):
        raise ExportError("an exported graph called a part of the model it was found not to use; this is a "
                          "vaelab bug, please report it")

    def extra_repr(self) -> str:
        return "not used by this graph"


def _drop_unused_parameters(graph: nn.Module, example: torch.Tensor) -> None:
    """Remove, in place, the weights the graph's output does not depend on (found by autograd), so that the
    exported decoder does not carry the encoder: a submodule all of whose weights are unused becomes a
    `_Dropped`, a lone unused parameter is deleted. Were one of them needed after all, the export would fail
    loudly: never a silently different graph."""
    graph.requires_grad_(True)
    named = list(graph.named_parameters())
    out = graph(example)
    outs = out if isinstance(out, tuple) else (out,)
    grads = torch.autograd.grad(sum(o.sum() for o in outs), [p for _, p in named], allow_unused=True)
    unused = {name for (name, _), grad in zip(named, grads) if grad is None}

    def prune(module: nn.Module, prefix: str) -> None:
        for child_name, child in list(module.named_children()):
            names = [f"{prefix}{child_name}.{n}" for n, _ in child.named_parameters()]
            if names and all(n in unused for n in names):
                setattr(module, child_name, _Dropped())
            else:
                prune(child, f"{prefix}{child_name}.")
        for name in list(module._parameters):
            if prefix + name in unused:
                del module._parameters[name]

    prune(graph, "")


def example_input(model: Model, part: str, batch: int, seed: int = 0) -> torch.Tensor:
    """Random inputs of `part`: codes z ~ N(0, I) for the decoder, images in [0, 1] for the encoder."""
    gen = torch.Generator().manual_seed(seed)
    if part == "decoder":
        return torch.randn((batch, model.latent_dim), generator=gen)
    return torch.rand((batch, *model.image_shape), generator=gen)


def reference(model: Model, part: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What vaelab itself computes for `part` on x (`Run.decode` / `Run.encode`), as a tuple of tensors."""
    device = next(model.parameters()).device
    with eval_mode(model):
        if part == "decoder":
            return (model.decode_mean(x.to(device)).cpu(),)
        q = model.encode(x.to(device))
        return (q.mean.cpu(), q.logvar.cpu()) if model.variational else (q.cpu(),)


# --------------------------------------------------------------------------- inputs and outputs


def model_kind(model: Model) -> str:
    if isinstance(model, HVAE):
        return "hvae"
    return "ae" if isinstance(model, Autoencoder) else "vae"


def model_arch(model: Model) -> str:
    """conv or mlp (model.arch); the HVAE has its own residual convolutional networks."""
    if isinstance(model, HVAE):
        return "hvae residual conv"
    return "mlp" if isinstance(model.encoder, MLPEncoder) else "conv"


def tensor_specs(model: Model, part: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The named inputs and outputs of `part`'s graph, with what each means."""
    c, h, w = model.image_shape
    d = model.latent_dim
    top = " of the top layer z_L (flattened in C-order from " \
          f"{model.latents[-1]}x{model.sizes[-1][0]}x{model.sizes[-1][1]})" if isinstance(model, HVAE) else ""
    z = TensorSpec("z", ["batch", d], "float32", f"latent codes{top}; see `latent` for their distribution")
    image = TensorSpec("image", ["batch", c, h, w], "float32",
                       "images, channels first, pixel values in [0, 1]")
    if part == "decoder":
        mean_image = TensorSpec("image", ["batch", c, h, w], "float32",
                                f"the mean of p(x|z) under the {model.likelihood.name} likelihood, in [0, 1] "
                                "(vaelab's Run.decode)")
        return [z], [mean_image]
    if not model.variational:
        return [image], [TensorSpec("code", ["batch", d], "float32", "the autoencoder's code z = f(x)")]
    return [image], [TensorSpec("mean", ["batch", d], "float32", f"mean of q(z|x){top}"),
                     TensorSpec("logvar", ["batch", d], "float32",
                                "log-variance of q(z|x) (std = exp(logvar / 2))")]


def latent_description(model: Model) -> dict[str, Any]:
    """How to draw codes z that the decoder turns into samples of the model."""
    if isinstance(model, Autoencoder):
        return {"distribution": "normal", "mean": model.code_mean.tolist(), "std": model.code_std.tolist(),
                "note": "vaelab samples an autoencoder from the diagonal Gaussian fitted to its training codes: "
                        "z = mean + std * eps, eps ~ N(0, I)"}
    if isinstance(model, HVAE):
        return {"distribution": "standard normal",
                "note": "z is the top layer's code, z_L ~ N(0, I); the decoder sets every lower layer to its "
                        "conditional prior mean (deterministic decoding, as Run.decode, vaelab reconstruct and "
                        "interpolate); the ancestral sampling of vaelab sample, with noise in every layer, is "
                        "not exported"}
    if isinstance(model, VAE) and model.prior == "vamp":
        return {"distribution": "VampPrior (not exported)",
                "note": "the prior is a mixture of the posteriors of learned pseudo-inputs; N(0, I) codes still "
                        "decode to images, but they are not samples of this model's prior"}
    return {"distribution": "standard normal", "note": "z ~ N(0, I); scale the std (temperature) below 1 "
                                                     "for smoother samples"}


def usage(model: Model, parts: Sequence[str], fmt: str) -> list[str]:
    """A short example (at most five lines) that runs the exported files from the export directory, without vaelab."""
    c, h, w = model.image_shape
    d = model.latent_dim
    outs = "mean, logvar" if model.variational else "(code,)" if fmt == "onnx" else "code"
    what = "q(z|x)" if model.variational else "the code"
    if fmt == "onnx":
        lines = ["import numpy as np, onnxruntime as ort", "rng = np.random.default_rng(0)"]
        if "decoder" in parts:
            lines += ["decoder = ort.InferenceSession('decoder.onnx')",
                      f"(image,) = decoder.run(None, {{'z': rng.standard_normal((16, {d}), dtype=np.float32)}})"
                      f"  # (16, {c}, {h}, {w}) in [0, 1]"]
        else:
            lines += [f"image = rng.random((16, {c}, {h}, {w}), dtype=np.float32)  # your images, in [0, 1]"]
        if "encoder" in parts:
            lines += [f"{outs} = ort.InferenceSession('encoder.onnx').run(None, {{'image': image}})"
                      f"  # {what}: (16, {d})"]
        return lines
    lines = ["import torch", "gen = torch.Generator().manual_seed(0)"]
    if "decoder" in parts:
        lines += ["decoder = torch.jit.load('decoder.pt')",
                  f"image = decoder(torch.randn(16, {d}, generator=gen))  # (16, {c}, {h}, {w}) in [0, 1]"]
    else:
        lines += [f"image = torch.rand(16, {c}, {h}, {w}, generator=gen)  # your images, in [0, 1]"]
    if "encoder" in parts:
        lines += [f"{outs} = torch.jit.load('encoder.pt')(image)  # {what}: (16, {d})"]
    return lines


# --------------------------------------------------------------------------- the two formats


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress logging and deprecation warnings; errors still propagate."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def to_onnx(graph: nn.Module, example: torch.Tensor, inputs: list[TensorSpec], outputs: list[TensorSpec],
            opset: int | None, metadata: dict[str, str]) -> bytes:
    """The graph as one self-contained ONNX file (weights inside), batch dimension symbolic."""
    try:
        with _quiet():
            program = torch.onnx.export(
                graph, (example,), dynamo=True, input_names=[s.name for s in inputs],
                output_names=[s.name for s in outputs], dynamic_shapes=({0: torch.export.Dim("batch")},),
                opset_version=opset, external_data=False, verbose=False, optimize=True)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {_first_line(exc)}); this is a vaelab "
                          "bug, please report it (--format torchscript may still work)") from exc
    proto = program.model_proto
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset is not None and got != opset:
        raise ConfigError(f"the ONNX exporter could not convert the model to opset {opset} (it has opset {got}); "
                          f"use --opset {got} or higher")
    proto.doc_string = metadata.get("description", "")
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    for value_info, spec in zip([*proto.graph.input, *proto.graph.output], [*inputs, *outputs]):
        value_info.doc_string = spec.meaning
    return proto.SerializeToString()


def to_torchscript(graph: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """The graph traced to TorchScript; `metadata` travels as the extra file vaelab.json."""
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={"vaelab.json": json.dumps(metadata, indent=2)})
    return buffer.getvalue()


def run_onnx(data: bytes, inputs: list[TensorSpec], outputs: list[TensorSpec],
             x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Check an ONNX file (onnx.checker, with shape inference) and run it in onnxruntime on x."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"the exported ONNX file does not load ({type(exc).__name__}: {_first_line(exc)}); "
                          "this is a vaelab bug, please report it") from exc
    names_in = [i.name for i in session.get_inputs()]
    names_out = [o.name for o in session.get_outputs()]
    if names_in != [s.name for s in inputs] or names_out != [s.name for s in outputs]:
        raise ExportError(f"the ONNX file has inputs {names_in} and outputs {names_out}, expected "
                          f"{[s.name for s in inputs]} and {[s.name for s in outputs]}; this is a vaelab bug")
    if isinstance(session.get_inputs()[0].shape[0], int):
        raise ExportError("the ONNX file has a fixed batch size; this is a vaelab bug, please report it")
    result = session.run(None, {names_in[0]: x.numpy()})
    return tuple(torch.from_numpy(r) for r in result)


def run_torchscript(data: bytes, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with _quiet(), torch.no_grad():
        out = torch.jit.load(io.BytesIO(data))(x)
    return out if isinstance(out, tuple) else (out,)


def max_abs_diff(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """The largest |got - want| over all outputs (inf when a shape differs or a value is not finite)."""
    if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
        return math.inf
    diff = max(float((g.float() - w.float()).abs().max()) for g, w in zip(got, want))
    return diff if math.isfinite(diff) else math.inf


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


# --------------------------------------------------------------------------- options and the whole export


def require_onnx() -> dict[str, str]:
    """The versions of onnx, onnxscript and onnxruntime, or ConfigError naming the extra to install."""
    try:
        import onnx
        import onnxruntime
        import onnxscript
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs onnx, onnxscript and onnxruntime ({exc.name or exc} is missing); "
                          "pip install 'vaelab[export]' (or use --format torchscript)") from None
    return {"onnx": onnx.__version__, "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


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


def export_model(model: Model, out: str | Path, *, formats: Sequence[str] = FORMATS,
                 parts: Sequence[str] = PARTS, opset: int | None = None, info: dict[str, Any] | None = None,
                 log: Callable[[str], None] = say) -> ExportResult:
    """Export `parts` of `model` in `formats` into the directory `out`, check each file against PyTorch,
    and write the manifest export.json (`info` adds to it: the run, checkpoint, config)."""
    check_options(formats, parts, opset)
    versions = {"vaelab": _vaelab_version(), "torch": torch.__version__}
    if "onnx" in formats:
        versions.update(require_onnx())
    out = prepare_out(out)
    files: list[ExportedFile] = []
    specs: dict[str, Any] = {}
    for part in parts:
        inputs, outputs = tensor_specs(model, part)
        specs[part] = {"inputs": [asdict(s) for s in inputs], "outputs": [asdict(s) for s in outputs]}
        example = example_input(model, part, EXAMPLE_BATCH)
        metadata = _file_metadata(model, part, versions)
        for fmt in formats:
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
            files.append(ExportedFile(part, fmt, path, len(data), hashlib.sha256(data).hexdigest(), seconds, diff))
            log(f"wrote {path} ({len(data) / 1e6:.2f} MB, {seconds:.1f} s; max |{fmt} - PyTorch| {diff:.1e} "
                f"on batches of {' and '.join(map(str, VERIFY_BATCHES))})")
    written = {f.path.name for f in files}
    for name in sorted(f"{p}{SUFFIX[f]}" for p in PARTS for f in FORMATS):
        if name not in written and (out / name).exists():
            log(f"note: {out / name} is left from an earlier export; export.json does not describe it")
    manifest = build_manifest(model, formats, parts, opset, versions, specs, files, info or {})
    from vaelab.runs import write_json

    write_json(out / MANIFEST, manifest)
    log(f"wrote {out / MANIFEST}")
    return ExportResult(out, files, manifest)


def export_run(path: str | Path, checkpoint: str = "best", out: str | Path | None = None, *,
               formats: Sequence[str] = FORMATS, parts: Sequence[str] = PARTS, opset: int | None = None,
               log: Callable[[str], None] = say) -> ExportResult:
    """Export a trained run's decoder and encoder (default into RUN/export/); see `export_model`."""
    from vaelab.runs import load_run

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


def build_manifest(model: Model, formats: Sequence[str], parts: Sequence[str], opset: int | None,
                   versions: dict[str, str], specs: dict[str, Any], files: list[ExportedFile],
                   info: dict[str, Any]) -> dict[str, Any]:
    """What export.json says: versions, the model, each part's inputs and outputs, the files, how to use them."""
    lik = model.likelihood
    likelihood = {"name": lik.name}
    if hasattr(lik, "std"):
        likelihood["std"] = lik.std
    if hasattr(lik, "components"):
        likelihood["components"] = lik.components
    by_format = {f: {"exporter": "torch.onnx.export(dynamo=True)" if f == "onnx" else "torch.jit.trace",
                     "usage": usage(model, parts, f)} for f in formats}
    if "torchscript" in formats:
        by_format["torchscript"]["note"] = ("torch.jit is deprecated upstream (it still loads in torch "
                                            f"{torch.__version__}); the ONNX files are the long-lived format")
    if "onnx" in formats:
        by_format["onnx"]["opset"] = opset if opset is not None else _onnx_opset(files)
    return {
        "format": "vaelab-export", "versions": versions, **info,
        "model": {"kind": model_kind(model), "arch": model_arch(model), "latent_dim": model.latent_dim,
                  "image_shape": list(model.image_shape), "pixel_range": [0.0, 1.0], "likelihood": likelihood},
        "latent": latent_description(model),
        "parts": {part: {**specs[part], "files": {f.format: f.path.name for f in files if f.part == part}}
                  for part in parts},
        "formats": by_format,
        "files": [{"path": f.path.name, "part": f.part, "format": f.format, "bytes": f.bytes, "sha256": f.sha256,
                   "seconds": round(f.seconds, 3), "max_abs_diff": f.max_abs_diff} for f in files],
        "check": {"tolerance": TOLERANCE, "batch_sizes": list(VERIFY_BATCHES),
                  "what": "each file, loaded from its bytes, against vaelab's PyTorch model on random inputs "
                          "(decoder: z ~ N(0, I); encoder: images uniform in [0, 1])"},
    }


def _file_metadata(model: Model, part: str, versions: dict[str, str]) -> dict[str, str]:
    """Strings stored inside each file (ONNX metadata_props; TorchScript's extra file vaelab.json)."""
    return {"description": f"vaelab {model_kind(model)} {part}: "
                           + ("z -> the mean image of p(x|z) in [0, 1]" if part == "decoder"
                              else "image in [0, 1] -> q(z|x)" if model.variational else "image in [0, 1] -> code"),
            "vaelab_version": versions["vaelab"], "torch_version": versions["torch"], "part": part,
            "model_kind": model_kind(model), "latent_dim": str(model.latent_dim),
            "image_shape": "x".join(map(str, model.image_shape)), "pixel_range": "0,1",
            "likelihood": model.likelihood.name}


def _onnx_opset(files: list[ExportedFile]) -> int | None:
    import onnx

    for f in files:
        if f.format == "onnx":
            proto = onnx.load(str(f.path), load_external_data=False)
            return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return None


def _vaelab_version() -> str:
    from vaelab._version import __version__

    return __version__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
