import json

import pytest
import torch

from medslim.artifacts import load, load_manifest, save
from medslim.errors import ArtifactError
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
