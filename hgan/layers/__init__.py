"""Building blocks (tensorflow/models order: layers → networks → models)."""
from hgan.layers.gumbel_topk import GumbelTopK

__all__ = ["GumbelTopK"]
