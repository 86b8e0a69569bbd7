"""`eval.compile`: a model's importance weights through torch.compile, and the eager path when that fails.

What is compiled is the model's own `log_weights(x, S, generator, ...)` -> (S, B), the one call the importance
sampler repeats k / S times per batch: the decoder (or the top-down pass) on S * B codes and the likelihood of
the data under it, fused by inductor. The encoder / bottom-up pass (`inference_context`) runs once per batch and
stays eager. The noise is drawn inside from the caller's generator as in eager mode (inductor keeps an explicit
generator's draws), so the compiled weights equal the eager ones within float32 rounding.

The function compiled is the class's `log_weights` (the model is an argument, not a constant): its parameters
are inputs of the graph, so a model trained further after an evaluation is scored with its new weights, and
torch.compile's own cache (one per code object, guarded on shapes) serves later calls without recompiling.
Shapes: `dynamic=None`, torch's default: a second shape recompiles once with symbolic sizes, and that graph then
serves the rest, so an evaluation compiles at most about twice whatever its batch and chunk sizes.

It is meant for GPUs. On the 2-core CPU (default VAE, k=1000, 32 test images, one thread, paired rounds) the
compiled weights ran at 0.85x eager and the decoder alone compiled at 1.00x: the eager path there already has
channels-last convolutions and the fold layer, which is what bench/kernels.py's 1.22x (a contiguous decoder
against its compiled self) left to gain.

Compilation happens at the first call and can fail (no C++ compiler or Triton on the machine, an operation
dynamo cannot trace, an inductor bug). Then the generator is put back where it was before the failed call and
the call is made eagerly: when that fails too, the error was the model's own and propagates unchanged; else one
line through `vaelab.log.say` names the compiler's reason and the rest of the evaluation runs eagerly, with the
numbers eager mode gives. The failure is remembered for the model's class and device for the rest of the process, so
later evaluations do not pay for a second failed compilation (each says one line that it runs eagerly).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from vaelab.log import say

_FAILED: dict[tuple[type, str], str] = {}  # (model class, device type) -> why compilation failed


def _reason(error: BaseException) -> str:
    """The first line of an exception (with the next when it only introduces it: "backend='inductor' raised:"),
    short enough for one line of output."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines[0] = f"{lines[0]} {lines[1]}"
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class CompiledWeights:
    """`model.log_weights` through torch.compile, called like it: `weights(x, s, generator, **options)` -> (S, B).

    `device_type` names the device the weights are computed on ("cpu", "cuda"), for the failure memo."""

    def __init__(self, model: Any, device_type: str) -> None:
        self.model = model
        self.key = (type(model), device_type)
        self.eager: Callable[..., torch.Tensor] = model.log_weights
        self.compiled: Callable[..., torch.Tensor] | None = None
        if self.key in _FAILED:
            say(f"eval.compile: evaluating eagerly (torch.compile failed earlier in this process: "
                f"{_FAILED[self.key]})")
            return
        try:
            self.compiled = torch.compile(type(model).log_weights, dynamic=None)
        except Exception as error:  # noqa: BLE001 - torch.compile itself refused (an unsupported Python, ...)
            self._fail(error)

    @property
    def active(self) -> bool:
        """Whether the calls still go through the compiled function."""
        return self.compiled is not None

    def _fail(self, error: BaseException) -> None:
        _FAILED[self.key] = why = _reason(error)
        self.compiled = None
        say(f"eval.compile: torch.compile failed ({why}); evaluating eagerly")

    def __call__(self, x: torch.Tensor, s: int, generator: torch.Generator | None, **options: Any) -> torch.Tensor:
        if self.compiled is None:
            return self.eager(x, s, generator, **options)
        # a failure may come after part of the call ran (the noise drawn): the eager retry starts from here
        state = generator.get_state() if generator is not None else None
        try:
            return self.compiled(self.model, x, s, generator, **options)
        except Exception as error:  # noqa: BLE001 - any failure of dynamo / inductor: the eager path instead
            if generator is not None:
                generator.set_state(state)
            # an error of the model itself (bad arguments, out of memory) fails eagerly too and propagates
            # from here as it would without eval.compile; only then is it a failure of the compiler
            weights = self.eager(x, s, generator, **options)
            self._fail(error)
            return weights


def log_weights_fn(model: Any, compile: bool, device_type: str) -> Callable[..., torch.Tensor]:
    """The function the importance sampler calls for (S, B) log-weights: `model.log_weights`, or with
    `compile` a `CompiledWeights` around it."""
    return CompiledWeights(model, device_type) if compile else model.log_weights


__all__ = ["CompiledWeights", "log_weights_fn"]
