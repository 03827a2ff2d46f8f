"""Pretrained weights from user files: by name, head left fresh, mismatches named."""

import pickle

import pytest
import torch
from torch import nn

from medslim.artifacts import save
from medslim.errors import ArtifactError, ConfigError
from medslim.models import build_model
from medslim.pretrained import classifier_head, freeze_backbone, load_pretrained, read_weights

VGG = {"name": "vgg16_bn", "num_classes": 2, "width": 0.125, "hidden": 0}


def _vgg(**kw):
    torch.manual_seed(kw.pop("seed", 0))
    return build_model({**VGG, "in_channels": 3, **kw})


def test_classifier_head_of_vgg_densenet_resnet():
    assert classifier_head(_vgg()) == "classifier"
    dense = build_model({"name": "monai.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2})
    assert classifier_head(dense) == "class_layers"
    res = build_model({"name": "monai.ResNet", "block": "basic", "layers": [1, 1, 1, 1],
                       "block_inplanes": [8, 8, 8, 8], "spatial_dims": 2, "n_input_channels": 1,
                       "num_classes": 2})
    assert classifier_head(res) == "fc"
    with pytest.raises(ConfigError, match="no classifier head"):
        classifier_head(build_model({"name": "unet", "spatial_dims": 2, "in_channels": 1,
                                     "out_channels": 2, "channels": [4, 8]}))


def test_torchvision_style_state_dict_loads_by_name_and_head_stays_fresh(tmp_path):
    source = _vgg(seed=1, num_classes=5, hidden=16)  # another task: another head
    file = tmp_path / "vgg16_bn.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, file)  # DataParallel names
    target = _vgg(seed=2)
    fresh_head = target.classifier[0].weight.clone()
    report = load_pretrained(target, file)
    for name, tensor in target.state_dict().items():
        if name.startswith("features."):
            assert torch.equal(tensor, source.state_dict()[name]), name
    assert torch.equal(target.classifier[0].weight, fresh_head)
    assert report["head_left_fresh"] == "classifier" and "classifier.6.weight" in report["head_tensors_ignored"]


def test_rgb_first_conv_loads_into_a_grey_network_with_identical_features(tmp_path):
    source = _vgg(seed=1).eval()
    save(source, tmp_path / "src")
    grey = _vgg(seed=2, in_channels=1).eval()
    report = load_pretrained(grey, tmp_path / "src")
    assert report["adapted_input_channels"] == ["features.0.weight"]
    image = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey.features(image), source.features(image.repeat(1, 3, 1, 1)), atol=1e-5)


def test_safetensors_file_and_checkpoint_dict(tmp_path):
    from safetensors.torch import save_file

    source = _vgg(seed=1)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, tmp_path / "ckpt.pt")
    for file in ("w.safetensors", "ckpt.pt"):
        target = _vgg(seed=2)
        load_pretrained(target, tmp_path / file)
        assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_another_architecture_is_refused_with_the_file_and_tensor_named(tmp_path):
    torch.save(_vgg(width=0.25).state_dict(), tmp_path / "wide.pth")
    target = _vgg()
    before = target.features[0].weight.clone()
    with pytest.raises(ArtifactError, match=r"wide\.pth.*features\.0\.weight: file"):
        load_pretrained(target, tmp_path / "wide.pth")
    assert torch.equal(target.features[0].weight, before)  # nothing half-loaded
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ArtifactError, match="missing from the file"):
        load_pretrained(target, tmp_path / "other.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    (b"not a torch file", "not a readable PyTorch state dict"),
    ("pickle", "weights_only=True"),
    ("list", "does not hold a state dict"),
])
def test_bad_weight_files(tmp_path, content, message, capsys):
    file = tmp_path / "w.pth"
    if content == "pickle":
        file.write_bytes(pickle.dumps({"x": _Payload()}))
    elif content == "list":
        torch.save([torch.zeros(1)], file)
    elif content is not None:
        file.write_bytes(content)
    with pytest.raises(ArtifactError, match=message):
        read_weights(file)
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(ArtifactError, match="unknown weights format"):
        (tmp_path / "w.txt").write_text("x")
        read_weights(tmp_path / "w.txt")


def test_freeze_backbone_leaves_only_the_head_trainable():
    net = _vgg()
    trainable = freeze_backbone(net)
    assert trainable == ["classifier.0.weight", "classifier.0.bias"]
    assert not any(p.requires_grad for n, p in net.named_parameters() if n.startswith("features"))
    assert isinstance(net.classifier[0], nn.Linear)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_with_file_and_tensor_named(tmp_path, suffix):
    from safetensors.torch import save_file

    state = {k: v.clone().contiguous() for k, v in _vgg(seed=1).state_dict().items()}
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    file = tmp_path / f"w{suffix}"
    torch.save(state, file) if suffix == ".pth" else save_file(state, str(file))
    target = _vgg(seed=2)
    before = target.features[0].weight.clone()
    with pytest.raises(ArtifactError, match=rf"w\{suffix}: tensor 'features\.0\.weight' holds 1 NaN"):
        load_pretrained(target, file)
    assert torch.equal(target.features[0].weight, before)


def test_pretrained_arguments_of_the_wrong_type_are_named(tmp_path):
    with pytest.raises(ConfigError, match="pretrained weights: expected a file or folder path"):
        read_weights(None)
    with pytest.raises(ConfigError, match="load_pretrained: model must be a torch.nn.Module"):
        load_pretrained("vgg", tmp_path)
