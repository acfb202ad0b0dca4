"""The ``paper`` preset's HGAN (ImageNet-shaped ResNet-50, a BERT loaded through the TF-Hub
BERT interface with its last four layers concatenated, the bi-LSTM, every matching head
and loss) trains under ``mixed_float16``: what a GPU user runs first, at shapes this CPU's
emulated float16 can afford (32×32 images, 8 pairs a batch, 16 WordPieces, a 4-layer
BERT of width 32 converted from random weights; no ImageNet download). At 32×32 the
ResNet-50's last stage is 1×1, so its BatchNorm sees one value per image: with 2 images a
batch the randomly initialised network's gradients overflow float16 even unscaled, with 8
the largest (conv1's kernel) is about 2,500."""
import numpy as np
import pytest

from data_prep import hf_bert
from hgan.config import preset
from hgan.tf_compat import keras
from hgan.training.hgan_task import HGANTask
from test_bert_convert import TINY_CONFIG, write_hf_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def four_layer_bert(tmp_path_factory):
    """A randomly initialised BERT-shaped encoder saved with the TF-Hub interface (the
    paper's concat4 needs four layers)."""
    root = tmp_path_factory.mktemp("bert")
    hf_dir = write_hf_dir(root / "hf", config={**TINY_CONFIG, "num_hidden_layers": 4})
    return hf_bert.convert(hf_dir, str(root / "tf"))


def _paper_config(bert, monkeypatch, **settings):
    """The ``paper`` preset at CPU-sized shapes under mixed precision. A fresh dynamic loss
    scale starts at 2^15 and halves on every overflowing step, so a randomly initialised
    ResNet-50 skips its first dozen steps. Started at 8 (8 × 2,500 < 65,504), the steps
    here are applied."""
    scaled = keras.mixed_precision.LossScaleOptimizer
    monkeypatch.setattr(keras.mixed_precision, "LossScaleOptimizer",
                        lambda inner: scaled(inner, initial_scale=2.0 ** 3))
    return preset("paper").replace(
        bert=bert, backbone_weights="none", image_height=32, image_width=32, max_len=16,
        max_phrases=3, batch_size=8, mixed_precision=True, token_cache_gib=0.0, seed=1,
        **settings)


def test_the_paper_model_trains_under_mixed_float16(tiny_data, four_layer_bert, monkeypatch):
    config = _paper_config(four_layer_bert, monkeypatch)
    assert (config.model.backbone, config.model.bert_layers) == ("resnet50", "concat4")
    try:
        task = HGANTask(config, tiny_data, val_split="none")
        model = task.model
        assert model.image_encoder.layers[-1].compute_dtype == "float16"
        assert {v.dtype.name for v in model.variables if v.dtype.is_floating} == {"float32"}
        trainable = model.trainable_variables
        before = [v.numpy().copy() for v in trainable]
        task.begin(0, log=lambda _: None)
        assert task.token_cache is None  # BERT runs in the step, as on CUHK-PEDES
        batches = task.batches("train", 0)
        for _ in range(2):
            terms = {k: float(v) for k, v in task.train_step("train", next(batches)).items()}
            assert all(np.isfinite(v) for v in terms.values()), terms
            assert terms["_scale_skipped"] == 0.0 and terms["grad_norm"] > 0, terms
        assert {v.dtype.name for v in model.variables if v.dtype.is_floating} == {"float32"}
        changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, trainable)]
        assert sum(changed) > 0.9 * len(trainable), (sum(changed), len(trainable))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_the_paper_model_trains_under_mixed_float16_with_xla(tiny_data, four_layer_bert,
                                                              monkeypatch):
    """``train.jit_compile``: each replica's forward pass and losses are XLA computations
    (their gradients too), traced once for the run: the text side keeps its static shapes,
    so a new batch is not a new compilation."""
    config = _paper_config(four_layer_bert, monkeypatch, jit_compile=True)
    try:
        task = HGANTask(config, tiny_data, val_split="none")
        trainable = task.model.trainable_variables
        before = [v.numpy().copy() for v in trainable]
        task.begin(0, log=lambda _: None)
        batches = task.batches("train", 0)
        for _ in range(2):  # a second batch is not a second compilation
            terms = {k: float(v) for k, v in task.train_step("train", next(batches)).items()}
            assert all(np.isfinite(v) for v in terms.values()), terms
            assert terms["_scale_skipped"] == 0.0 and terms["grad_norm"] > 0, terms
        forward, losses = task._jit_parts
        assert [f.experimental_get_tracing_count() for f in (forward, losses)] == [1, 1]
        assert "XlaMustCompile" in str(
            forward.get_concrete_function(next(batches)).function_def.attr)
        changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, trainable)]
        assert sum(changed) > 0.9 * len(trainable), (sum(changed), len(trainable))
    finally:
        keras.mixed_precision.set_global_policy("float32")
