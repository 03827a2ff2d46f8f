"""Networks by name: medslim's own and any MONAI network.

``build_model(spec)`` takes a plain dict, as it appears in a YAML config or a
saved manifest, and records that dict on the model so it can be saved and
rebuilt without pickle::

    >>> net = build_model({"name": "unet", "spatial_dims": 2, "in_channels": 3,
    ...                    "out_channels": 2, "channels": [16, 32, 64]})
    >>> net2 = build_model({"name": "monai.BasicUNet", "spatial_dims": 3})
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

from torch import nn

from medslim.errors import ConfigError, unknown_name

NATIVE = {
    "unet": ("medslim.models.unet", "UNet"),
    "vgg16_bn": ("medslim.models.vgg", "VGGClassifier"),
    "sshn": ("medslim.models.sshn", "ScaleSpaceHyperNet"),
    "lowres": ("medslim.models.jnet", "LowResSegmenter"),
}
MONAI_PREFIX = "monai."
# The MONAI networks medslim is tested with; others by name are allowed too.
MONAI_TESTED = ("UNet", "BasicUNet", "DynUNet", "AttentionUnet", "SegResNet",
                "DenseNet121", "ResNet", "resnet18")
SPEC_ATTR = "_medslim_spec"
CHANNEL_ARGS = ("in_channels", "n_input_channels")
CLASS_ARGS = ("out_channels", "num_classes")


def model_names() -> list[str]:
    return sorted(NATIVE) + [MONAI_PREFIX + n for n in MONAI_TESTED]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"name": ..., **constructor arguments}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError("a model spec needs a 'name' key, e.g. {'name': 'unet', ...}")
    spec = copy.deepcopy(spec)
    name = spec.pop("name")
    cls = model_class(name)
    _check_kwargs(name, cls, spec)
    try:
        model = cls(**spec)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise ConfigError(f"model {name!r} rejected its arguments {spec}: {err}") from err
    setattr(model, SPEC_ATTR, {"name": name, **spec})
    return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The spec a model was built from, or None for a model medslim did not build."""
    return copy.deepcopy(getattr(model, SPEC_ATTR, None))


def model_class(name: str):
    """The class (or factory) a model name stands for: medslim's own or ``monai.<Name>``."""
    if name in NATIVE:
        module, attr = NATIVE[name]
        return getattr(__import__(module, fromlist=[attr]), attr)
    if isinstance(name, str) and name.startswith(MONAI_PREFIX):
        import monai.networks.nets as nets

        cls = getattr(nets, name[len(MONAI_PREFIX):], None)
        if callable(cls):
            return cls
    raise unknown_name("model", name, model_names())


def _check_kwargs(name: str, cls, kwargs: dict) -> None:
    params = inspect.signature(cls).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        allowed = ", ".join(p for p in params if p != "self")
        raise ConfigError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {allowed}")


def complete_spec(spec: dict[str, Any], spatial_dims: int | None, in_channels: int | None,
                  classes: int | None) -> dict[str, Any]:
    """Fill a spec's dimensions, image channels and classes under whatever names its network uses.

    Values the spec already states must agree; ``None`` leaves a value to the spec.
    """
    spec = copy.deepcopy(spec)
    params = inspect.signature(model_class(spec["name"])).parameters
    if "spatial_dims" in params and spatial_dims is not None:
        spec.setdefault("spatial_dims", spatial_dims)
    for names, value, what in ((CHANNEL_ARGS, in_channels, "image channels"),
                               (CLASS_ARGS, classes, "classes")):
        key = next((n for n in names if n in params), None)
        if key is None or value is None:
            continue
        if key in spec and spec[key] != value:
            raise ConfigError(f"model.{key}={spec[key]} does not fit the data, which has "
                              f"{value} {what}; remove model.{key} or set it to {value}")
        spec[key] = value
    if spatial_dims is not None and spec.get("spatial_dims", spatial_dims) != spatial_dims:
        raise ConfigError(f"model.spatial_dims={spec['spatial_dims']} but the data is {spatial_dims}D")
    return spec
