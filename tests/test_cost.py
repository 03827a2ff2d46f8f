"""Tests for medslim.cost: counts by hand formula, latency fields, verified ONNX export, memory."""

from __future__ import annotations

import subprocess
import sys
from math import prod
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medslim.cost import (
    ExportError,
    count_flops,
    count_macs,
    count_params,
    export_onnx,
    latency_onnx,
    latency_torch,
    measure,
    peak_memory,
)
from medslim.errors import MedslimError

# --- tiny models -----------------------------------------------------------


class Net2D(nn.Module):
    """Conv + InstanceNorm + PReLU, down conv, ConvTranspose up, interpolate, skip cat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm2d(4, affine=True)
        self.act = nn.PReLU(4)
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.act(self.norm(self.conv(x)))
        up = self.up(self.down(skip))
        up = F.interpolate(up, size=skip.shape[2:], mode="bilinear", align_corners=False)
        return self.head(torch.cat([skip, up], dim=1))


class Net3D(nn.Module):
    """3D conv, InstanceNorm, ConvTranspose3d and trilinear resize."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, stride=2, padding=1)
        self.norm = nn.InstanceNorm3d(4)
        self.up = nn.ConvTranspose3d(4, 2, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.norm(self.conv(x))))
        return F.interpolate(y, scale_factor=0.5, mode="trilinear")


class TwoHeads(nn.Module):
    """Returns a tuple even in eval mode, like some deep-supervision nets.

    ``noisy`` adds random noise to that output (0 or 1), which ONNX Runtime
    cannot reproduce: only the first output is the prediction that is compared.
    """

    def __init__(self, noisy: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.noisy = noisy

    def forward(self, x: torch.Tensor):
        y = self.conv(x)
        outputs = [y, y.mean(dim=(2, 3))]
        if self.noisy is not None:
            outputs[self.noisy] = outputs[self.noisy] + torch.randn_like(outputs[self.noisy])
        return tuple(outputs)


class Noisy(nn.Module):
    """Exports fine but ONNX Runtime draws other random numbers: a real mismatch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


class DataDependent(nn.Module):
    """A value-dependent branch: torch.export refuses it, the tracer bakes it in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x * 3


class Unexportable(nn.Module):
    """SVD has no ONNX translation in either exporter."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.svd(x[0, 0])[1]


# --- counting --------------------------------------------------------------


def _conv_flops(cin: int, cout: int, k: tuple[int, ...], out_spatial: tuple[int, ...], batch: int = 1) -> int:
    """2 * MACs: every output voxel of every output channel needs cin * prod(k) MACs."""
    return 2 * batch * cout * prod(out_spatial) * cin * prod(k)


def test_flops_conv2d_matches_hand_formula():
    x = torch.randn(2, 3, 10, 12)
    assert count_flops(nn.Conv2d(3, 8, 3, padding=1), x) == _conv_flops(3, 8, (3, 3), (10, 12), batch=2)


def test_flops_conv3d_strided_matches_hand_formula():
    x = torch.randn(1, 2, 8, 8, 6)
    # stride 2, pad 1, k 3: output 4 x 4 x 3
    assert count_flops(nn.Conv3d(2, 5, 3, stride=2, padding=1), x) == _conv_flops(2, 5, (3, 3, 3), (4, 4, 3))


def test_flops_linear_matches_hand_formula():
    assert count_flops(nn.Linear(7, 5), torch.randn(3, 7)) == 2 * 3 * 7 * 5


def test_flops_conv_transpose_counts_per_input_voxel():
    # each input voxel scatters cin * cout/groups * prod(k) MACs
    x = torch.randn(1, 4, 3, 4, 5)
    model = nn.ConvTranspose3d(4, 6, 2, stride=2, groups=2)
    assert count_flops(model, x) == 2 * (3 * 4 * 5) * 4 * (6 // 2) * 8
    assert count_macs(model, x) == count_flops(model, x) // 2


def test_flops_accepts_tuple_and_restores_training_flag():
    class Add(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, a, b):
            return self.lin(a) + b

    model = Add().train()
    assert count_flops(model, (torch.randn(2, 4), torch.randn(2, 4))) == 2 * 2 * 4 * 4
    assert model.training and model.lin.training


def test_count_params_all_and_trainable():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2))
    assert count_params(model) == (3 * 8 * 9 + 8) + (8 * 2 + 2)
    model[0].requires_grad_(False)
    assert count_params(model, trainable_only=True) == 8 * 2 + 2


# --- latency ---------------------------------------------------------------

LATENCY_KEYS = {"median_ms", "p90_ms", "mean_ms", "min_ms", "repeats", "threads"}


def test_latency_torch_fields_and_threads_restored():
    before = torch.get_num_threads()
    result = latency_torch(nn.Conv2d(1, 4, 3), torch.randn(1, 1, 16, 16), threads=1, warmup=1, repeats=3)
    assert set(result) == LATENCY_KEYS
    assert result["repeats"] == 3 and result["threads"] == 1
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert torch.get_num_threads() == before


def test_latency_onnx_fields(tmp_path):
    x = torch.randn(1, 1, 16, 16)
    path = export_onnx(nn.Conv2d(1, 4, 3), x, tmp_path / "m.onnx", exporter="torchscript")["path"]
    result = latency_onnx(path, x, threads=1, warmup=1, repeats=3)
    assert set(result) == LATENCY_KEYS
    assert result["min_ms"] > 0 and result["repeats"] == 3


def test_ort_session_profile_names_each_operator(tmp_path):
    import json

    from medslim.cost.latency import ort_feeds, ort_session

    x = torch.randn(1, 1, 16, 16)
    path = export_onnx(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU()), x, tmp_path / "m.onnx", exporter="torchscript")["path"]
    session = ort_session(path, threads=1, profile_prefix=str(tmp_path / "prof"))
    session.run(None, ort_feeds(session, x))
    events = json.loads(Path(session.end_profiling()).read_text())
    ops = {e["args"]["op_name"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")}
    assert "Conv" in ops  # the ReLU may be fused into it


# --- ONNX export -----------------------------------------------------------


def _check_export(model: nn.Module, x: torch.Tensor, tmp_path, exporter: str = "auto") -> dict:
    path = tmp_path / "model.onnx"
    info = export_onnx(model, x, path, exporter=exporter)
    assert info["path"] == str(path) and path.is_file()
    assert info["max_abs_diff"] <= 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no sidecar, no staging folder
    return info


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_small_2d_net(tmp_path, exporter):
    info = _check_export(Net2D(), torch.randn(1, 1, 16, 16), tmp_path, exporter)
    assert info["exporter"] == exporter and info["dynamic_batch"]


def test_export_small_3d_net(tmp_path):
    info = _check_export(Net3D(), torch.randn(1, 1, 8, 8, 8), tmp_path)
    assert info["exporter"] == "dynamo" and info["opset"] == 18


def test_export_monai_unet_2d(tmp_path):
    from monai.networks.nets import UNet

    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2))
    _check_export(model, torch.randn(1, 1, 32, 32), tmp_path)


def test_export_monai_basic_unet_3d(tmp_path):
    from monai.networks.nets import BasicUNet

    model = BasicUNet(spatial_dims=3, features=(4, 4, 8, 8, 16, 4)).train()
    _check_export(model, torch.randn(1, 1, 32, 32, 32), tmp_path)
    assert model.training  # export uses eval mode but gives the model back as it was


def test_export_monai_dynunet_deep_supervision(tmp_path):
    from monai.networks.nets import DynUNet

    model = DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                    deep_supervision=True, deep_supr_num=1)
    _check_export(model.train(), torch.randn(1, 1, 16, 16, 16), tmp_path)


def test_export_falls_back_to_torchscript_with_warning(tmp_path):
    x = torch.rand(1, 1, 4, 4) + 0.1  # not constant: the export is checked on this input, the traced branch
    with pytest.warns(UserWarning, match="fell back to the torchscript"):
        info = _check_export(DataDependent(), x, tmp_path)
    assert info["exporter"] == "torchscript" and info["opset"] == 17


def test_export_sequence_output_compares_first(tmp_path):
    _check_export(TwoHeads(), torch.randn(1, 1, 8, 8), tmp_path, exporter="torchscript")
    _check_export(TwoHeads(noisy=1), torch.randn(1, 1, 8, 8), tmp_path, exporter="torchscript")
    with pytest.raises(ExportError, match="max abs diff"):
        export_onnx(TwoHeads(noisy=0), torch.randn(1, 1, 8, 8), tmp_path / "model.onnx", exporter="torchscript")


def test_a_constant_example_is_verified_on_a_seeded_random_input(tmp_path):
    from medslim.cost.onnx_export import _random_if_constant
    from medslim.models import build_model

    # a zero image makes instance norm divide rounding noise by sqrt(eps): PyTorch and
    # ONNX Runtime then differ by whole units, though both are right
    unet = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2,
                        "channels": [4, 8, 16]})
    info = _check_export(unet, torch.zeros(1, 3, 32, 32), tmp_path)
    assert info["max_abs_diff"] <= 1e-4
    image = torch.randn(1, 3, 8, 8)
    assert _random_if_constant((image,))[0] is image
    replaced = _random_if_constant((torch.zeros(1, 3, 8, 8),))[0]
    assert replaced.shape == (1, 3, 8, 8) and replaced.std() > 0.5
    assert torch.equal(replaced, _random_if_constant((torch.ones(1, 3, 8, 8),))[0])  # seeded
    scalar = torch.tensor([0.5])
    assert _random_if_constant((torch.zeros(1, 3, 8, 8), scalar))[1] is scalar


def test_a_constant_example_that_passes_is_not_replaced(tmp_path):
    # the traced branch of a data-dependent model is right for the example it was traced on;
    # checking it on a random input (the other branch) would refuse a correct file
    with pytest.warns(UserWarning, match="fell back to the torchscript"):
        info = _check_export(DataDependent(), torch.ones(1, 1, 4, 4), tmp_path)
    assert info["exporter"] == "torchscript"


def test_a_constant_example_that_fails_both_checks_names_both(tmp_path):
    with pytest.raises(ExportError, match="max abs diff.*constant; on a seeded random input"):
        export_onnx(Noisy(), torch.zeros(1, 1, 8, 8), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_mismatch_raises_and_keeps_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good")
    with pytest.raises(ExportError, match="max abs diff") as err:
        export_onnx(Noisy(), torch.randn(1, 1, 8, 8), path)
    assert str(path) in str(err.value)
    assert isinstance(err.value, MedslimError)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_unexportable_leaves_nothing(tmp_path):
    with pytest.raises(ExportError, match="could not export"):
        export_onnx(Unexportable(), torch.randn(1, 1, 4, 4), tmp_path / "sub" / "model.onnx")
    assert list((tmp_path / "sub").iterdir()) == []


# --- memory ----------------------------------------------------------------


def test_peak_memory_single_conv_is_its_output():
    out_bytes = 8 * 64 * 64 * 4
    mem = peak_memory(nn.Conv2d(2, 8, 1), torch.randn(1, 2, 64, 64))
    assert out_bytes <= mem["activation_peak_bytes"] <= 2 * out_bytes
    assert mem["param_bytes"] == (2 * 8 + 8) * 4
    assert mem["total_bytes"] == mem["activation_peak_bytes"] + mem["param_bytes"] + mem["input_bytes"]


def test_peak_memory_counts_live_not_total_allocations():
    # conv -> relu (not in place) -> conv: relu's input and output are live together,
    # but the first conv's output is freed before the last one finishes
    out_bytes = 8 * 64 * 64 * 4
    model = nn.Sequential(nn.Conv2d(2, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 1))
    peak = peak_memory(model, torch.randn(1, 2, 64, 64))["activation_peak_bytes"]
    assert 2 * out_bytes <= peak < 3 * out_bytes


# --- report ----------------------------------------------------------------


def test_measure_returns_all_keys(tmp_path):
    result = measure(nn.Conv2d(1, 4, 3), torch.randn(1, 1, 16, 16), threads=(1, 2), workdir=tmp_path, repeats=2)
    expected = {
        "params", "flops", "macs", "input_shape", "threads", "repeats", "torch_latency", "onnx_latency",
        "onnx_max_abs_diff", "onnx_exporter", "onnx_opset", "activation_peak_bytes", "param_bytes", "input_bytes",
        "total_bytes", "memory_method", "torch_version", "onnxruntime_version", "cpu", "cpu_count",
    }
    assert expected <= set(result)
    assert result["params"] == 40 and result["macs"] == result["flops"] // 2 == 4 * 14 * 14 * 9
    assert set(result["torch_latency"]) == set(result["onnx_latency"]) == {"1", "2"}
    assert result["onnx_max_abs_diff"] <= 1e-4
    assert result["input_shape"] == [1, 1, 16, 16]
    assert list(tmp_path.iterdir()) == []  # the temporary export is gone


def test_import_does_not_load_heavy_modules():
    code = "import sys, medslim.cost; print([m for m in ('onnx', 'onnxruntime', 'monai') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- bad input ---------------------------------------------------------------


def _nan_conv() -> nn.Module:
    conv = nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(float("nan"))
    return conv


def test_export_refuses_non_finite_output_and_keeps_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"good")
    with pytest.raises(ExportError, match="NaN or infinite") as err:
        export_onnx(_nan_conv(), torch.randn(1, 1, 8, 8), path, exporter="torchscript")
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no staging folder left


def test_export_refuses_bad_output_paths_up_front(tmp_path):
    from medslim.errors import ConfigError

    plain = tmp_path / "plain.onnx"
    plain.write_bytes(b"good")
    cases = [(tmp_path, "is a directory"), (plain / "x.onnx", f"{plain} is a file, not a folder")]
    if Path("/proc/self").is_dir():  # Linux: a virtual file system that refuses new files
        cases.append((Path("/proc/x.onnx"), "cannot create files in /proc"))
    for target, message in cases:
        with pytest.raises(ConfigError, match="ONNX") as err:
            export_onnx(nn.Conv2d(1, 2, 3), torch.randn(1, 1, 8, 8), target)
        assert str(target) in str(err.value) and message in str(err.value)
    assert plain.read_bytes() == b"good" and sorted(p.name for p in tmp_path.iterdir()) == ["plain.onnx"]


def test_counting_names_bad_arguments():
    from medslim.errors import ConfigError

    with pytest.raises(ConfigError, match="count_params: model must be a torch.nn.Module, got str"):
        count_params("x")
    with pytest.raises(ConfigError, match="count_flops: model must be"):
        count_flops(None, torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match=r"example_input of shape \[1, 1, 8, 8\]: .*3 channels"):
        count_flops(nn.Conv2d(3, 4, 3), torch.randn(1, 1, 8, 8))
    with pytest.raises(ConfigError, match="example_input must be a tensor"):
        count_flops(nn.Conv2d(3, 4, 3), "x")


def test_export_names_an_input_the_model_cannot_take(tmp_path):
    from medslim.errors import ConfigError

    with pytest.raises(ConfigError, match=r"example_input of shape \[1, 1, 8, 8\]"):
        export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, name", [({"threads": 0}, "threads"), ({"threads": -1}, "threads"),
                                          ({"repeats": 0}, "repeats"), ({"warmup": -1}, "warmup")])
def test_latency_names_bad_counts(kwargs, name):
    from medslim.errors import ConfigError

    before = torch.get_num_threads()
    with pytest.raises(ConfigError, match=rf"{name} must be an integer >= "):
        latency_torch(nn.Conv2d(1, 4, 3), torch.randn(1, 1, 8, 8), **kwargs)
    assert torch.get_num_threads() == before
