"""Structural pruning: channel groups from a real trace, then physical removal.

Three ideas, three places: ``graph`` (``DependencyGraph``: which channels must
go together), ``criteria`` (how important each channel is), ``pruner``
(``prune``: how many go, where and when). ``channel_scaling`` selects channels
of a frozen pretrained classifier by trained scales, in rounds. ``surgery`` removes channels
(``prune_channels``) or zeroes them with the same result (``mask_channels``).
"""

from medslim.pruning.channel_scaling import channel_scaling
from medslim.pruning.graph import (ChannelGroup, Consumer, DependencyGraph, Norm, Producer,
                                   PruningError, Site)
from medslim.pruning.pruner import PruneReport, prune
from medslim.pruning.sauron import Sauron
from medslim.pruning.surgery import MaskHandle, mask_channels, prune_channels

# methods that prune while the network trains, as training hooks
TRAINING_METHODS = {"sauron": Sauron}


def training_pruner(method: str, example_input, **options):
    """The training hook of an in-training pruning method, e.g. ``"sauron"``."""
    import inspect

    from medslim.errors import ConfigError, unknown_name

    if method not in TRAINING_METHODS:
        raise unknown_name("in-training pruning method", method, TRAINING_METHODS)
    cls = TRAINING_METHODS[method]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "example_input")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown option prune.{unknown[0]} for {method!r}; allowed: "
                          + ", ".join(f"prune.{a}" for a in allowed))
    return cls(example_input, **options)


__all__ = ["ChannelGroup", "channel_scaling", "Consumer", "DependencyGraph", "MaskHandle", "Norm", "Producer",
           "PruneReport", "PruningError", "Sauron", "Site", "TRAINING_METHODS", "mask_channels",
           "prune", "prune_channels", "training_pruner"]
