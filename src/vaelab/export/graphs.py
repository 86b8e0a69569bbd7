"""The exportable graphs of a model: its decoder and encoder as plain modules, with named inputs and outputs.

    decoder   z (batch, latent_dim) float32      -> image (batch, C, H, W): the mean of p(x|z) in [0, 1]
                                                    (what `Run.decode` returns)
    encoder   image (batch, C, H, W) in [0, 1]   -> mean, logvar (batch, latent_dim): q(z|x) of a VAE
                                                    (the HVAE: of its top layer), or code for an autoencoder

`build_graph` wraps a CPU float32 copy of the model without the weights the graph does not use; `reference`
is what vaelab itself computes for the same inputs, which every exported file is checked against.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from vaelab.models import HVAE, Model, eval_mode
from vaelab.models.conv import FoldConvTranspose2d

PARTS = ("decoder", "encoder")
EXAMPLE_BATCH = 2  # the batch traced at export; 0 and 1 would be specialized by torch.export


class ExportError(RuntimeError):
    """An exported graph failed to build, load or run, or disagrees with PyTorch: a vaelab bug."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output of an exported graph."""

    name: str
    shape: list[int | str]  # "batch" is the dynamic dimension
    dtype: str
    meaning: str


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


def tensor_specs(model: Model, part: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The named inputs and outputs of `part`'s graph, with what each means."""
    c, h, w = model.image_shape
    d = model.latent_dim
    # the HVAE's exported code is its top layer, whose layout (channels x height x width) only that class knows
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
