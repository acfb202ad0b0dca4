"""The flags of a command that encodes images into a gallery (``hgan-search index``,
``hgan-beam-index``): where the images come from and how the gallery stores them; and
``--nprobe`` of the commands that query one (``hgan-search query``, ``hgan-serve``)."""
from __future__ import annotations

from absl import flags

from hgan.serving import codec

DTYPES = ["float16", "float32", "int8", "pq"]


def define(prefix: str = "") -> None:
    """Defines --images, --data_dir, --split, --dtype, --codebook, --pq_subdim, --pq_rotation and
    --batch_size; ``prefix`` starts each help (a subcommand's name, e.g. "index: ")."""
    flags.DEFINE_string("images", None, f"{prefix}a folder of JPEG/PNG images, or a .txt "
                        "file listing image paths (one a line, relative to the list).")
    flags.DEFINE_string("data_dir", None, f"{prefix}a data_prep output dir instead of a "
                        "folder.")
    flags.DEFINE_string("split", "test", f"{prefix}the split of --data_dir.")
    flags.DEFINE_enum("dtype", "float16", DTYPES,
                      f"{prefix}how a new gallery stores the features (hgan.serving.codec): "
                      "int8, the re-rank tables as int8 with a scale per row; pq, "
                      "product-quantised; the global embedding stays float16 in both.")
    flags.DEFINE_string("codebook", None, f"{prefix}--dtype=pq: a gallery (e.g. shard 0's) "
                        "whose pq codebooks this one codes with, so the two merge; default: "
                        "trained on the first images encoded.")
    flags.DEFINE_integer("pq_subdim", None, f"{prefix}--dtype=pq: values per one-byte code "
                         f"of a new gallery's codebooks (default {codec.PQ_SUBDIM}; recorded "
                         "by the codebooks' shape).", lower_bound=1)
    flags.DEFINE_boolean("pq_rotation", True, f"{prefix}--dtype=pq: a new gallery's rows are "
                         "turned by a learnt rotation before they are coded (OPQ: about half "
                         "pq's squared error; a query decodes its candidates through it, "
                         "~5 ms at the paper's widths, and a new gallery trains it, minutes "
                         "at those widths); --nopq_rotation codes them as they are.")
    flags.DEFINE_integer("batch_size", 32, f"{prefix}images per encode_image call.",
                         lower_bound=1)


def define_nprobe(prefix: str = "") -> None:
    """Defines --nprobe: IVF lists a query visits (``hgan.serving.ann.NPROBE`` by default)."""
    flags.DEFINE_integer("nprobe", None, f"{prefix}IVF lists visited per query (galleries "
                         "with an IVF); default by the IVF's kind: 32 for IVF-Flat, 128 for "
                         "IVF-PQ.", lower_bound=1)
