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
}
MONAI_PREFIX = "monai."
# The MONAI networks medslim is tested with; others by name are allowed too.
MONAI_TESTED = ("UNet", "BasicUNet", "DynUNet", "AttentionUnet", "SegResNet",
                "DenseNet121", "ResNet", "resnet18")
SPEC_ATTR = "_medslim_spec"


def model_names() -> list[str]:
    return sorted(NATIVE) + [MONAI_PREFIX + n for n in MONAI_TESTED]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a network from ``{"name": ..., **constructor arguments}``."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError("a model spec needs a 'name' key, e.g. {'name': 'unet', ...}")
    spec = copy.deepcopy(spec)
    name = spec.pop("name")
    cls = _resolve(name)
    _check_kwargs(name, cls, spec)
    try:
        model = cls(**spec)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError(f"model {name!r} rejected its arguments {spec}: {err}") from err
    setattr(model, SPEC_ATTR, {"name": name, **spec})
    return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """The spec a model was built from, or None for a model medslim did not build."""
    return copy.deepcopy(getattr(model, SPEC_ATTR, None))


def _resolve(name: str):
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
