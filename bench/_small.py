"""What the benches' ``--small`` runs share (not a bench itself): the small flag values,
a tiny demo data set, a vocab of its captions and a random-initialised tiny export.

A bench imports this module by name: Python puts the folder of the script it runs,
``bench/``, first on the module search path.
"""
from __future__ import annotations

import json
import os
import re

from absl import flags

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HELP = ("Tiny shapes and counts, end to end in seconds (what tests/test_benches.py runs): "
        "every figure of the full run is printed, at sizes that say nothing about speed. "
        "A flag given explicitly keeps its value.")


def define_flag() -> None:
    flags.DEFINE_boolean("small", False, HELP)


def apply(values: dict, flag_values=flags.FLAGS) -> bool:
    """Under ``--small``, sets every flag of ``values`` that the command line did not give;
    returns whether ``--small`` is on."""
    if not flag_values.small:
        return False
    for name, value in values.items():
        if not flag_values[name].present:
            setattr(flag_values, name, value)
    return True


def demo_data(root: str, identities: int, shots: int = 2, seed: int = 0):
    """The demo generator's raw set in ``root/raw`` written to TFRecords in ``root/tfr``
    by hgan-prep's writer → (raw dir, TFRecords dir, manifest)."""
    from data_prep import demo, writer
    raw, out = os.path.join(root, "raw"), os.path.join(root, "tfr")
    demo.generate(raw, identities=identities, shots=shots, seed=seed)
    manifest = writer.write_dataset("demo", raw, out, log=lambda *_: None)
    return raw, out, manifest


def caption_vocab(raw: str, path: str) -> str:
    """A vocab.txt of BERT's special tokens and every word and punctuation mark of the
    raw set's captions (lower case), for a ``scratch:`` BERT."""
    words = set()
    with open(os.path.join(raw, "reid_raw.json"), encoding="utf-8") as f:
        for record in json.load(f):
            for caption in record["captions"]:
                words.update(re.findall(r"\w+|[^\w\s]", caption.lower()))
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL + sorted(words)) + "\n")
    return path


def tiny_config(vocab: str):
    """The ``tiny`` HGAN preset with a 2-layer scratch BERT over ``vocab``."""
    from hgan.config import preset
    return preset("tiny").replace(vocab_file=vocab, bert="scratch:2x16", bert_layers="last")


def random_export(config, output_dir: str, num_classes: int = 2) -> str:
    """``config``'s HGAN with its random initial weights, exported as hgan-export does
    (``hgan_module.servable`` + ``savedmodel.save_servable``): the signatures cost what a
    trained model's do; its scores mean nothing."""
    from hgan.data import pipeline
    from hgan.modeling.hgan.model import build_model
    from hgan.serving import hgan_module, savedmodel
    model = build_model(config, pipeline.make_tokenizer(config).vocab_size + 1, num_classes)
    module, signatures = hgan_module.servable(model)
    return savedmodel.save_servable(module, signatures, output_dir, config,
                                    "none: random initial weights (bench/_small.py)")


def data_and_export(root: str, flag_values=flags.FLAGS) -> None:
    """``--small`` of the serving benches: a 10-identity demo set and a random-initialised
    tiny export in ``root``, for whichever of ``--data_dir`` / ``--savedmodel`` the command
    line left unset."""
    if flag_values.data_dir is not None and flag_values.savedmodel is not None:
        return
    raw, data_dir, _ = demo_data(os.path.join(root, "data"), identities=10)
    if flag_values.data_dir is None:
        flag_values.data_dir = data_dir
    if flag_values.savedmodel is None:
        config = tiny_config(caption_vocab(raw, os.path.join(root, "vocab.txt")))
        flag_values.savedmodel = random_export(config, os.path.join(root, "savedmodel"))
