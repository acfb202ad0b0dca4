"""The local heads' shape flags that the kernel benches share (not a bench itself):
``local_head_parts.py`` and ``topk_select.py`` time the same heads at the paper's shapes.

A bench imports this module by name, as it does ``_small``.
"""
from __future__ import annotations

from absl import flags


def define_shape_flags() -> None:
    """--regions, --hidden, --k1, --k2 at the paper's values (HGAN §4)."""
    flags.DEFINE_integer("regions", 15, "Regions N of an image (the paper's word level: 15).")
    flags.DEFINE_integer("hidden", 512, "H of the heads' table rows (the paper: 512).")
    flags.DEFINE_integer("k1", 4, "Words each region selects (the paper's k1).")
    flags.DEFINE_integer("k2", 2, "Regions each word selects (the paper's k2).")
