"""Structural pruning: channel groups from a real trace, then physical removal.

Three ideas, three places: ``graph`` (``DependencyGraph``: which channels must
go together), ``criteria`` (how important each channel is), ``pruner``
(``prune``: how many go, where and when). ``surgery`` removes channels
(``prune_channels``) or zeroes them with the same result (``mask_channels``).
"""

from medslim.pruning.graph import (ChannelGroup, Consumer, DependencyGraph, Norm, Producer,
                                   PruningError, Site)
from medslim.pruning.pruner import PruneReport, prune
from medslim.pruning.surgery import MaskHandle, mask_channels, prune_channels

__all__ = ["ChannelGroup", "Consumer", "DependencyGraph", "MaskHandle", "Norm", "Producer",
           "PruneReport", "PruningError", "Site", "mask_channels", "prune", "prune_channels"]
