"""Export a network to a single, verified ONNX file.

Exporter choice (torch 2.13): the ``torch.export``-based "dynamo" exporter at
its native opset 18 is tried first. It captures the real graph (it refuses
data-dependent Python branches instead of silently baking one in), folds
BatchNorm into convs, and exported every conv net we tried (2D/3D convs,
ConvTranspose, InstanceNorm, PReLU, interpolate, MONAI UNet, BasicUNet,
DynUNet, SegResNet, AttentionUnet, VNet) with a dynamic batch dimension.
Asking it for opset 17 makes it export at 18 and down-convert, which
sometimes fails silently and leaves 18, so we do not. If it raises, the
legacy TorchScript exporter (opset 17, deprecated but still shipped) is used
as a fallback with a warning: it traces one input shape, so shape-dependent
branches are fixed to that shape. The exporter actually used and the opset
read back from the file are returned.

Every export is checked by running the file in ONNX Runtime on the example
input (a seeded random one where the example is constant, such as
``torch.zeros``); only a file that matches PyTorch is moved into place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

Names = tuple[list[str], list[str]]

import numpy as np
import torch
from torch import nn

from medslim._io import check_output_folder
from medslim.cost.counting import ExampleInput, as_inputs, evaluating, require_module, run_model
from medslim.errors import ConfigError, MedslimError, MedslimWarning

DEFAULT_OPSET = {"dynamo": 18, "torchscript": 17}


class ExportError(MedslimError):
    """A model that cannot be exported to ONNX, or whose ONNX output is wrong."""


def first_output(output: Any) -> torch.Tensor:
    """The tensor we compare: the output itself, or the first of a sequence.

    Deep-supervision nets return a list in training mode; in eval mode most
    return one tensor, and when they do not the first element is the
    full-resolution prediction.
    """
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise ExportError(f"cannot compare a model output of type {type(output).__name__}")
    return output


def _io_names(inputs: tuple[torch.Tensor, ...], output: Any) -> Names:
    """Stable input/output names, so ORT feeds and dynamic axes can refer to them."""
    ins = ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]
    n_out = len(output) if isinstance(output, (list, tuple)) else 1
    outs = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
    return ins, outs


def _batched(inputs: tuple[torch.Tensor, ...]) -> list[bool]:
    """Which inputs share the first input's leading (batch) dimension."""
    batch = inputs[0].shape[0] if inputs[0].dim() else None
    return [t.dim() > 0 and t.shape[0] == batch for t in inputs]


def _export_dynamo(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], file: Path, opset: int, names: Names, dynamic: bool
) -> None:
    """``torch.export``-based exporter; one self-contained file, no external data."""
    shapes = None
    if dynamic:
        batch = torch.export.Dim("batch")
        shapes = tuple({0: batch} if b else None for b in _batched(inputs))
    torch.onnx.export(
        model, inputs, os.fspath(file), dynamo=True, opset_version=opset,
        external_data=False, verbose=False, input_names=names[0],
        output_names=names[1], dynamic_shapes=shapes,
    )


def _export_torchscript(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], file: Path, opset: int, names: Names, dynamic: bool
) -> None:
    """Legacy tracing exporter, kept as a fallback for models torch.export rejects."""
    axes = None
    if dynamic:
        axes = {n: {0: "batch"} for n, b in zip(names[0], _batched(inputs)) if b}
        axes.update({n: {0: "batch"} for n in names[1]})
    torch.onnx.export(
        model, inputs, os.fspath(file), dynamo=False, opset_version=opset,
        input_names=names[0], output_names=names[1], dynamic_axes=axes,
        do_constant_folding=True,
    )


EXPORTERS: dict[str, Callable[..., None]] = {
    "dynamo": _export_dynamo,
    "torchscript": _export_torchscript,
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress logs and known-harmless warnings.

    The numeric check after export is what guards correctness; the chatter
    (missing torchvision ops, the legacy exporter's deprecation note, tracer
    warnings) would otherwise drown the CLI's output.
    """
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, FutureWarning, torch.jit.TracerWarning):
                warnings.simplefilter("ignore", category)
            warnings.filterwarnings("ignore", message=".*ONNX export mode is set to")
            warnings.filterwarnings("ignore", message=".*Constant folding")
            # DynUNet's deep-supervision head list, unused in eval mode
            warnings.filterwarnings("ignore", message=".*were assigned during export")
            yield
    finally:
        logger.setLevel(level)


def _clear(folder: Path) -> None:
    """Remove whatever a failed attempt left in the staging folder."""
    for entry in folder.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _run_exporters(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    file: Path,
    order: list[str],
    opset: Optional[int],
    names: Names,
    dynamic: bool,
) -> str:
    """Try each exporter in ``order``; return the name of the first that succeeds."""
    errors = []
    for name in order:
        try:
            with _quiet():
                EXPORTERS[name](model, inputs, file, opset or DEFAULT_OPSET[name], names, dynamic)
        except Exception as exc:  # exporters raise many unrelated types
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            errors.append(f"{name}: {type(exc).__name__}: {first_line}")
            _clear(file.parent)
            continue
        if errors:
            warnings.warn(f"ONNX export fell back to the {name} exporter ({errors[-1]})", MedslimWarning,
                          stacklevel=3)
        return name
    raise ExportError(f"could not export {type(model).__name__} to ONNX ({'; '.join(errors)})")


def _file_facts(file: Path) -> tuple[int, bool]:
    """The default-domain opset and whether the first input's batch dim is symbolic."""
    import onnx

    proto = onnx.load(os.fspath(file), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return int(opset), bool(dims) and dims[0].HasField("dim_param")


def _compare(
    file: Path, inputs: tuple[torch.Tensor, ...], reference: torch.Tensor, rtol: float, atol: float, target: Path
) -> float:
    """Run the file in ONNX Runtime; raise :class:`ExportError` if it disagrees."""
    from medslim.cost.latency import ort_feeds, ort_session

    try:
        session = ort_session(file, threads=torch.get_num_threads())
        got = session.run(None, ort_feeds(session, inputs))[0]
    except Exception as exc:
        raise ExportError(f"ONNX Runtime cannot run the export for {target}: {exc}") from exc
    want = reference.detach().cpu().numpy()
    if got.shape != want.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch {want.shape} for {target}")
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    # the reference is finite (checked before export), so a NaN here is a mismatch
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        raise ExportError(
            f"ONNX export for {target} does not match PyTorch: max abs diff {diff:.3g} "
            f"(rtol={rtol}, atol={atol}); the file was not written"
        )
    return diff


def _random_if_constant(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A seeded standard-normal stand-in for an example whose every tensor is constant; else ``inputs``.

    Only tensors with more than one element count and are replaced (a scalar
    condition is left as given); the global random state is left alone.
    """
    def constant(t: torch.Tensor) -> bool:
        return t.numel() > 1 and bool((t == t.flatten()[0]).all())

    if not all(constant(t) for t in inputs):
        return inputs
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(t.shape, generator=gen, dtype=t.dtype).to(t.device) if t.is_floating_point() else t
                 for t in inputs)


def _verify(model: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any, file: Path,
            rtol: float, atol: float, target: Path) -> float:
    """Compare ONNX Runtime with PyTorch on the example; a constant example gets a second chance.

    ``torch.zeros(shape)`` is the usual way to give a shape, but a constant
    image makes instance norm divide rounding noise by ``sqrt(eps)``, and two
    correct runtimes then disagree by whole units. When the check fails on
    such an example, it is repeated on a seeded random input of the same
    shape, and the export passes if it agrees there.
    """
    try:
        return _compare(file, inputs, first_output(output), rtol, atol, target)
    except ExportError as on_example:
        stand_in = _random_if_constant(inputs)
        if stand_in is inputs:
            raise
        with evaluating(model):
            reference = first_output(run_model(model, stand_in))
        if not bool(torch.isfinite(reference).all()):
            raise on_example from None
        try:
            return _compare(file, stand_in, reference, rtol, atol, target)
        except ExportError as on_random:
            raise ExportError(f"{on_example} (the example input is constant; on a seeded random "
                              f"input of its shape too: {on_random})") from None


def _output_path(path: Any) -> Path:
    """The ONNX file to write; a directory or a non-path is refused before any work."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ConfigError(f"export_onnx: path must be a file path (str or os.PathLike), got {path!r:.60}")
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"ONNX output {target} is a directory; give a file path such as "
                          f"{target / 'model.onnx'}")
    return target


def _staging_folder(target: Path) -> Path:
    """A hidden folder next to ``target`` to build the file in.

    Creating it up front is the real test that ``target`` can be written (a
    parent that is a file, a read-only or virtual file system), so a bad path
    fails before the slow export and with the path named.
    """
    check_output_folder(target.parent, f"the ONNX file {target} needs the folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as err:
        raise ConfigError(f"cannot write the ONNX file {target}: cannot create files in "
                          f"{target.parent} ({err.strerror or err})") from None


def _require_finite(reference: torch.Tensor, target: Path) -> None:
    """NaN/inf in PyTorch's own output means broken weights; such a file must not replace a good one."""
    if not bool(torch.isfinite(reference).all()):
        raise ExportError(f"the model's PyTorch output holds NaN or infinite values, so the export "
                          f"for {target} was refused (check the weights); the file was not written")


def _move_into_place(file: Path, target: Path) -> None:
    """Same folder, so atomic; the target may have become unwritable since the staging folder was made."""
    try:
        os.replace(file, target)
    except OSError as err:
        raise ConfigError(f"cannot write the ONNX file {target}: {err.strerror or err}") from None


def export_onnx(
    model: nn.Module,
    example_input: ExampleInput,
    path: str | os.PathLike,
    opset: Optional[int] = None,
    check: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    exporter: str = "auto",
    dynamic_batch: bool = True,
) -> dict[str, Any]:
    """Export ``model`` (in eval mode) to one ``.onnx`` file at ``path`` and verify it.

    ``exporter`` is "auto" (dynamo, then TorchScript), "dynamo" or
    "torchscript"; ``opset=None`` uses the exporter's native opset. The file is
    built in a hidden staging folder next to ``path`` and moved into place only
    after the check passes, so a failure leaves no file (nor external-data
    sidecar) behind and never replaces an existing good file.

    Returns {"path", "max_abs_diff" (None without check), "opset",
    "exporter", "dynamic_batch"} where opset and dynamic_batch are read back
    from the written graph.
    """
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if any(name not in EXPORTERS for name in order):
        raise ExportError(f"unknown ONNX exporter {exporter!r}; choose auto, dynamo or torchscript")
    require_module(model, "export_onnx")
    inputs = as_inputs(example_input)
    target = _output_path(path)
    staging = _staging_folder(target)
    try:
        file = staging / target.name
        with evaluating(model):
            output = run_model(model, inputs)
            _require_finite(first_output(output), target)
            names = _io_names(inputs, output)
            used = _run_exporters(model, inputs, file, order, opset, names, dynamic_batch)
        if [p.name for p in staging.iterdir()] != [file.name]:
            raise ExportError(f"the export for {target} needs external data files; only single-file ONNX is supported")
        opset_used, dynamic = _file_facts(file)
        diff = _verify(model, inputs, output, file, rtol, atol, target) if check else None
        _move_into_place(file, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": str(target), "max_abs_diff": diff, "opset": opset_used, "exporter": used, "dynamic_batch": dynamic}
