"""An estimate, not a measurement: the ``paper`` preset's HGAN training step on one GPU,
from the model's FLOPs and parameter counts, and the command that measures it.

  python bench/gpu_estimate.py [--batch=32] [--peak_tflops=312] [--utilisation=0.2] \
      [--hbm_gbs=1555] [--gpu="A100 40GB SXM"] [--memory_gb=40]
  python bench/gpu_estimate.py --small

FLOPs are counted analytically, per layer:

* ResNet-50 (HGAN §4; 384×192): every Conv2D and Dense of the built backbone and image
  encoder, 2·(output elements)·(kernel h·w)·(input channels), read from the Keras model's
  static shapes;
* the frozen BERT (BERT-base: 12 layers, width 768, FFN 3072; ``max_len`` WordPieces): per
  token and layer 2·(4·H² + 2·H·FFN) for the projections and 2·2·L·H for attention; it
  runs forward only (not trained: no backward, no stored activations);
* the text head: the word and phrase FCs (3072 → 512), the self-attention block over
  words and phrases, the bi-LSTM (input product and recurrence, both directions) and the
  sentence FC, at ``max_len`` words (an upper bound: words are fewer than WordPieces);
* the word and phrase matching heads (Eqs. 2–8) over every image-caption pair of the
  batch: their towers per item and 6·R·N·H per pair (γ, the fusions of both directions),
  R = ``max_len`` words or ``max_phrases`` phrases, N = 15 regions, H = 512;
* the identity classifier (Eq. 10) over both modalities' 2·B vectors.

Element-wise work (BatchNorm, activations, softmaxes, the Gumbel top-k) is left out: it
costs memory traffic, not tensor-core time. A training step is 3× the forward FLOPs of
everything trained (the backward pass costs about two forward passes) plus one forward of
the frozen BERT. Parameters are the built model's own counts (``build_model`` with a
randomly initialised BERT of BERT-base's shape: its 64 positions instead of 512 leave out
0.34 M).

Memory: float32 weights, Adam's two moments and the float32 gradients of the trained
weights, float16 copies of every weight, and the activations kept for the backward pass in
float16: every ResNet-50 layer's output (an upper bound; XLA's fusion keeps fewer), the
text head's, and four [B, B, R or N, H] pair tensors per matching level. Step time: the
FLOPs at ``--peak_tflops`` × ``--utilisation``, or the bytes moved at ``--hbm_gbs``
(each activation written and read twice, the optimizer's state read and written once),
whichever is longer.

The defaults: A100 40 GB SXM, 312 TFLOP/s dense float16 on its tensor cores, 1,555 GB/s of
HBM2; a utilisation of 20 %, about what NVIDIA's published TensorFlow ResNet-50 v1.5
training throughput on one A100 40GB comes to (DeepLearningExamples, mixed precision + XLA,
batch 256: 2,375 images/s × 3 × 8.2 GFLOPs at 224×224 = 58 TFLOP/s, 19 %). That run had
XLA and 8× this batch, so the estimate is more likely optimistic than not.

``--small`` (tests/test_benches.py): the ``tiny`` preset's shapes; every line of the full
run, at sizes that say nothing.
"""
from __future__ import annotations

import numpy as np
from absl import app, flags

import _small
from hgan.config import preset
from hgan.modeling.backbones import build_backbone
from hgan.modeling.hgan.model import build_model
from hgan.modeling.hgan.visual import partition_grid
from hgan.tf_compat import keras

FLAGS = flags.FLAGS
SMALL = {"batch": 4}
BERT_BASE = {"layers": 12, "hidden": 768, "ffn": 3072, "vocab": 30522}
CLASSES = 11003  # CUHK-PEDES's training identities (HGAN §4)


def define_flags():
    flags.DEFINE_integer("batch", 32, "Global batch (HGAN §4: 32).")
    flags.DEFINE_string("gpu", "A100 40GB SXM", "The GPU's name, as printed.")
    flags.DEFINE_float("peak_tflops", 312.0, "Its dense float16 tensor-core peak, TFLOP/s.")
    flags.DEFINE_float("utilisation", 0.2, "The share of that peak a step achieves.")
    flags.DEFINE_float("hbm_gbs", 1555.0, "Its memory bandwidth, GB/s.")
    flags.DEFINE_float("memory_gb", 40.0, "Its memory, GB.")
    _small.define_flag()


def layer_flops(model: keras.Model) -> tuple[float, float]:
    """(forward FLOPs of one image, output elements of one image) over every Conv2D and
    Dense layer (and every layer's output) of a functional model, nested models included."""
    flops = elements = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            f, e = layer_flops(layer)
            flops, elements = flops + f, elements + e
            continue
        shapes = layer.output_shape if isinstance(layer.output_shape, list) else [layer.output_shape]
        for shape in shapes:
            if isinstance(shape, tuple):
                elements += float(np.prod([d for d in shape[1:] if d]))
        if isinstance(layer, keras.layers.Conv2D):
            out = np.prod(layer.output_shape[1:])
            kh, kw = layer.kernel_size
            flops += 2.0 * out * kh * kw * layer.input_shape[-1] / layer.groups
        elif isinstance(layer, keras.layers.Dense):
            rows = np.prod([d for d in layer.output_shape[1:-1] if d]) if \
                len(layer.output_shape) > 2 else 1
            flops += 2.0 * rows * layer.input_shape[-1] * layer.units
    return flops, elements


def bert_forward(layers: int, hidden: int, ffn: int, length: int) -> float:
    """Forward FLOPs of one caption of ``length`` tokens through a BERT encoder."""
    per_token = 2 * (4 * hidden ** 2 + 2 * hidden * ffn) + 2 * 2 * length * hidden
    return float(layers * length * per_token)


def text_head_forward(c, token_dim: int) -> float:
    """Forward FLOPs of one caption through the text head (module docstring)."""
    L, M, d, u = c.data.max_len, c.data.max_phrases, c.model.local_dim, c.model.lstm_units
    block = lambda n: n * (2 * (4 * d * d + 2 * d * 2 * d) + 2 * 2 * n * d)  # noqa: E731
    fcs = 2 * (L + M) * token_dim * d + 2 * 2 * u * c.model.embed_dim
    lstm = 2 * L * token_dim * 8 * u + 2 * 2 * L * u * 4 * u
    return float(fcs + block(L) + block(M) + lstm)


def heads_forward(c, batch: int, regions: int) -> tuple[float, float]:
    """(forward FLOPs, kept float16 bytes) of the word and phrase matching heads over every
    pair of a batch, and of the identity classifier."""
    d, h = c.model.local_dim, c.model.mlp_hidden
    flops = memory = 0.0
    for keys in (c.data.max_len, c.data.max_phrases):
        towers = batch * (keys + regions) * 2 * (d * h + h * h + d * h)
        pairs = batch * batch * (6 * keys * regions * h + 2 * (keys + regions) * h)
        flops += towers + pairs
        memory += 4 * batch * batch * (keys + regions) * h * 2
    flops += 2 * 2 * batch * c.model.embed_dim * CLASSES
    return float(flops), float(memory)


def main(argv):
    del argv
    small = _small.apply(SMALL)
    if small:
        config = preset("tiny").replace(bert="scratch:4x16", batch_size=FLAGS.batch)
        bert = {"layers": 4, "hidden": 16, "ffn": 64, "vocab": 100}
        classes = 10
    else:
        config = preset("paper").replace(bert="scratch:12x768", backbone_weights="none",
                                         batch_size=FLAGS.batch)
        bert, classes = BERT_BASE, CLASSES
    c, B = config, FLAGS.batch
    token_dim = bert["hidden"] * (4 if c.model.bert_layers == "concat4" else 1)
    model = build_model(config, bert["vocab"], classes)
    image = model.image_encoder
    rows, cols = partition_grid(c.model.partition_map, c.model.word_pool, c.model.word_stride)
    regions = rows * cols
    backbone = build_backbone(c.model.backbone, (c.data.image_height, c.data.image_width, 3))
    _, backbone_elements = layer_flops(backbone)
    image_flops, image_elements = layer_flops(image)
    bert_flops = bert_forward(bert["layers"], bert["hidden"], bert["ffn"], c.data.max_len)
    text_flops = text_head_forward(c, token_dim)
    head_flops, head_bytes = heads_forward(c, B, regions)
    trained_forward = B * (image_flops + text_flops) + head_flops
    step_flops = 3 * trained_forward + B * bert_flops

    params = model.count_params()
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    activations = 2.0 * (B * image_elements + B * c.data.max_len * (token_dim + 6 * c.model.local_dim)
                         ) + head_bytes
    state = 4.0 * params + 2.0 * params + (8.0 + 4.0) * trainable
    memory = state + activations
    moved = 2 * 2 * activations + 2 * (4 * params + 12 * trainable)
    compute_s = step_flops / (FLAGS.peak_tflops * 1e12 * FLAGS.utilisation)
    memory_s = moved / (FLAGS.hbm_gbs * 1e9)
    step_s = max(compute_s, memory_s)

    size = f"{c.data.image_height}x{c.data.image_width}"
    print(f"ESTIMATE (not measured): the {'tiny' if small else 'paper'} preset's HGAN, batch "
          f"{B}, {size} images, {c.data.max_len} WordPieces, {c.data.max_phrases} phrases, "
          f"{regions} regions, mixed_float16")
    print(f"parameters: {params / 1e6:,.1f} M ({trainable / 1e6:,.1f} M trained; the BERT "
          f"is frozen)")
    print("| part | forward GFLOPs per step | trained |")
    print("|---|---:|---|")
    rows = [(f"{c.model.backbone} + image FCs ({size})", B * image_flops, "yes"),
            (f"BERT ({bert['layers']}x{bert['hidden']}, {c.data.max_len} tokens)",
             B * bert_flops, "no: forward only"),
            ("text head (FCs, self-attention, bi-LSTM)", B * text_flops, "yes"),
            (f"matching heads over {B}x{B} pairs + classifier", head_flops, "yes")]
    for name, flops, trained in rows:
        print(f"| {name} | {flops / 1e9:,.1f} | {trained} |")
    print(f"training step: {step_flops / 1e12:,.2f} TFLOPs (3 x the trained forward + the "
          f"BERT forward); backbone activations {B * backbone_elements * 2 / 1e9:,.2f} GB")
    print(f"memory: weights, float16 copies, Adam and gradients {state / 1e9:,.2f} GB + kept "
          f"activations {activations / 1e9:,.2f} GB = {memory / 1e9:,.1f} GB of the "
          f"{FLAGS.gpu}'s {FLAGS.memory_gb:,.0f} GB")
    print(f"step time on one {FLAGS.gpu} ({FLAGS.peak_tflops:,.0f} TFLOP/s float16 at "
          f"{FLAGS.utilisation:.0%}, {FLAGS.hbm_gbs:,.0f} GB/s): compute {compute_s * 1e3:,.0f} "
          f"ms, memory traffic {memory_s * 1e3:,.0f} ms -> about {step_s * 1e3:,.0f} ms a "
          f"step, {B / step_s:,.0f} pairs/s")
    print("measure it (CUHK-PEDES imported by hgan-prep; TF_FORCE_GPU_ALLOW_GROWTH so that "
          "nvidia-smi shows what the run uses; the progress line gives steps/s):")
    print("  TF_FORCE_GPU_ALLOW_GROWTH=true hgan-train --config=paper --data_dir=CUHK_TFRECORDS "
          "--model_dir=runs/paper_gpu --val_split=none --max_steps=300 "
          "--set=train.mixed_precision=true --set=train.log_every=50 & "
          "nvidia-smi --query-gpu=memory.used --format=csv -l 10")


if __name__ == "__main__":
    define_flags()
    app.run(main)
