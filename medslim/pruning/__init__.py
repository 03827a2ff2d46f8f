"""Structural pruning: channel groups from a real trace, then physical removal.

``DependencyGraph`` finds which channels must go together; ``prune_channels``
removes them; ``mask_channels`` zeroes them instead, with the same result.
"""

from medslim.pruning.graph import (ChannelGroup, Consumer, DependencyGraph, Norm, Producer,
                                   PruningError, Site)
from medslim.pruning.surgery import MaskHandle, mask_channels, prune_channels

__all__ = ["ChannelGroup", "Consumer", "DependencyGraph", "MaskHandle", "Norm", "Producer",
           "PruningError", "Site", "mask_channels", "prune_channels"]
