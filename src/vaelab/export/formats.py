"""Writing a graph as ONNX or TorchScript bytes, and running those bytes back (the exported file's check).

ONNX goes through `torch.onnx.export(dynamo=True)` and is run in onnxruntime after onnx.checker; TorchScript
comes from `torch.jit.trace` and is run after `torch.jit.load`. onnx, onnxscript and onnxruntime are
optional (`vaelab[export]`): they are imported only when an ONNX file is made or checked.
"""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from vaelab.errors import ConfigError
from vaelab.export.graphs import ExportError, TensorSpec

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
MIN_OPSET = 18  # the dynamo exporter's lowest (older ones need a version conversion that may fail)
TOLERANCE = 1e-4  # largest |exported - PyTorch| accepted; float32 reordering gives about 1e-7
VERIFY_BATCHES = (1, 5)  # batch sizes run in the check, unlike the traced one


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


def opset_of(proto: Any) -> int:
    """The default-domain operator set version of an ONNX ModelProto."""
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


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
        raise ExportError(f"torch.onnx.export failed ({type(exc).__name__}: {first_line(exc)}); this is a vaelab "
                          "bug, please report it (--format torchscript may still work)") from exc
    proto = program.model_proto
    got = opset_of(proto)
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
        raise ExportError(f"the exported ONNX file does not load ({type(exc).__name__}: {first_line(exc)}); "
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


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (for one-line errors)."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
