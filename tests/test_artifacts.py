import json

import pytest
import torch

from medslim.artifacts import load, load_manifest, save
from medslim.errors import ArtifactError, ConfigError
from medslim.models import build_model

SPEC = {"name": "unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 2, "channels": [4, 8, 16]}


def _model():
    torch.manual_seed(0)
    return build_model(SPEC)


def test_round_trip_gives_identical_outputs(tmp_path):
    net = _model().eval()
    save(net, tmp_path / "m", extra={"input_shape": [1, 3, 32, 32]})
    again = load(tmp_path / "m")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(net(x), again(x))
    assert again.medslim_manifest["extra"]["input_shape"] == [1, 3, 32, 32]
    # the weights or the manifest file path work too
    assert isinstance(load(tmp_path / "m" / "model.json"), type(net))


def test_files_hold_no_pickle(tmp_path):
    save(_model(), tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    assert manifest["model"] == SPEC
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pkl"))
    assert (tmp_path / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors header is JSON


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(ArtifactError, match="no model at"):
        load(tmp_path / "nothing")
    save(_model(), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ArtifactError, match="model.safetensors is not a readable"):
        load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="model.json is not valid JSON"):
        load(tmp_path)


def test_weights_that_do_not_match_the_manifest(tmp_path):
    save(_model(), tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["model"]["channels"] = [8, 16, 32]
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="does not match the model.*shape mismatches"):
        load(tmp_path)


def test_unknown_model_name_in_manifest(tmp_path):
    save(_model(), tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["model"]["name"] = "mystery"
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="cannot rebuild.*mystery"):
        load(tmp_path)


def test_newer_format_is_refused(tmp_path):
    save(_model(), tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["format_version"] = 99
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="newer medslim"):
        load_manifest(tmp_path)


def test_model_not_built_by_medslim_needs_a_spec(tmp_path):
    with pytest.raises(ArtifactError, match="pass spec"):
        save(torch.nn.Conv2d(1, 1, 3), tmp_path)


# --- bad input: non-finite weights, malformed manifests, wrong argument types ----


def _poison(folder, value=float("nan")):
    """Rewrite the saved weights with one non-finite entry in the first conv's weight."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(folder / "model.safetensors"))
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_file_and_tensor_named(tmp_path, value):
    save(_model(), tmp_path)
    name = _poison(tmp_path, value)
    with pytest.raises(ArtifactError, match=rf"model\.safetensors: tensor '{name}' holds 1 NaN or infinite"):
        load(tmp_path)


def test_training_checkpoint_with_adam_state_still_loads(tmp_path):
    from medslim.training.checkpoint import load_checkpoint, save_checkpoint

    net = _model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(1, 3, 32, 32)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "ckpt", net, opt, {"epoch": 1})
    again = _model()
    opt_again = torch.optim.Adam(again.parameters())
    assert load_checkpoint(tmp_path / "ckpt", again, opt_again) == {"epoch": 1}
    for a, b in zip(again.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    for p, q in zip(again.parameters(), net.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_again.state[p][key], opt.state[q][key])
        assert float(opt_again.state[p]["step"]) == 1


@pytest.mark.parametrize("pruned, field", [
    ("garbage", "'pruned' must be an object"),
    (True, "'pruned' must be an object"),
    ({"widths": "garbage"}, "'pruned.widths' must map"),
    ({"widths": {"encoder.0.0": [99, 99]}}, r"'pruned.widths' gives module 'encoder\.0\.0' the width \[99, 99\]"),
    ({"widths": {"encoder.0.1": 0}}, "'pruned.widths' .* the width 0; a width is a positive integer"),
])
def test_malformed_pruned_field_is_refused(tmp_path, pruned, field):
    save(_model(), tmp_path)
    manifest = json.loads((tmp_path / "model.json").read_text())
    manifest["pruned"] = pruned
    (tmp_path / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=rf"model\.json: field {field}"):
        load(tmp_path)


@pytest.mark.parametrize("path", [None, 42, ""])
def test_load_names_a_path_argument_of_the_wrong_type(path):
    with pytest.raises(ConfigError, match="load: path"):
        load(path)


def test_save_refuses_a_plain_file_and_a_path_under_one(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("keep me")
    with pytest.raises(ConfigError, match=rf"save: {file} is a file"):
        save(_model(), file)
    with pytest.raises(ConfigError, match=rf"cannot create the folder {file / 'sub'}"):
        save(_model(), file / "sub")
    assert file.read_text() == "keep me"
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module"):
        save("not a model", tmp_path / "m")


def test_save_with_unserialisable_extra_keeps_the_earlier_model(tmp_path):
    save(_model(), tmp_path, extra={"run": 1})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    torch.manual_seed(5)
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        save(build_model(SPEC), tmp_path, extra={"bad": object()})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
