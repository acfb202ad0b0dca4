"""Benchmark: a full HGAN training step against a step of its two backbones alone.

  python bench/train_step.py [--image_size=384,192] [--batch=32] [--bert=scratch:12x768]
                             [--bert_trainable] [--steps=5] [--warmup=2]
  python bench/train_step.py --small

The defaults are the ``paper`` preset's setting (§4: batch 32, 384×192, BERT-base; frozen as
§3.2 reads); about 3 minutes on 2 CPU cores.

Full: ``hgan.training.hgan_task.HGANTask``'s compiled step (MirroredStrategy on /cpu:0), i.e.
both towers, the three matching levels, every loss of §3.4 and the paper preset's
optimisation: Adam (``optim.make_optimizer``) with coupled L2 weight decay
(``weight_decay_mode="l2"``: ``optim.l2_term``, weight_decay · Σ ½‖w‖² over the trainable
kernels, added to the loss; no decoupled decay in the optimizer). Baseline: a step in the
same strategy on the same batch through the same image backbone
(``backbones.build_backbone``) and the same BERT (``text.load_bert`` +
``text.select_layers``), loss = mean of both outputs plus the same L2 term over those two
parts' trainable variables, the same Adam over them (the full step's guard against
non-finite steps is not in the baseline). Both get a fixed synthetic batch
(random image, 20-40 real tokens, 3-5 phrases, pairs of identities), so the input
pipeline is not timed (``bench/data_pipeline.py`` measures it).

Target: full / baseline <= 1.05, i.e. the heads, bi-LSTM, self-attention layers and losses
of HGAN add at most 5 % to the cost of ResNet-50 + BERT.

Beside the times: each step's FLOPs, counted as ``bench/gpu_estimate.py`` counts them
(every convolution, dense layer and product; element-wise work left out; the backward pass
as two forwards of what is trained, the frozen BERT forward only), the GFLOP/s a step
achieves, and that as a share of TensorFlow's float32 matmul peak measured in the same
process just before (``eval_scoring.matmul_peak_gflops``). A BERT's FLOPs come from its
``scratch:LxH`` spec or a converted BERT's ``assets/bert_config.json``; other handles
print the times only.

``--bert`` is ``scratch:LxH`` (a random BertEncoder; the default 12x768 is BERT-base-sized,
4x256 makes a quick run), the converted MiniLM (``demo_out/bert``) or
a real BERT SavedModel / TF-Hub handle. ``--bert_trainable`` is applied to the BERT of
both steps (a ``scratch:`` encoder would otherwise always train). Steps are interleaved
(baseline, full, baseline, ...) so that load from other processes hits both alike; the
median is reported. Prints its figures; asserts nothing.

``--small`` (tests/test_benches.py): ``small_cnn`` at 64×32, batch 4, a 4x16 scratch BERT
over a 1,000-word vocab, 8 identities, one warm-up and 2 timed steps of each kind; every
line of the full run in about 30 s.
"""
import json
import os
import shutil
import statistics
import tempfile
import time

from absl import app, flags
import numpy as np

import _small
from eval_scoring import matmul_peak_gflops
import gpu_estimate
from hgan.config import preset
from hgan.data import records
from hgan.modeling import backbones
from hgan.modeling.hgan import text
from hgan.modeling.hgan.visual import partition_grid
from hgan.tf_compat import tf
from hgan.training import optim
from hgan.training.hgan_task import HGANTask

FLAGS = flags.FLAGS
SMALL = {"image_size": ["64", "32"], "batch": 4, "backbone": "small_cnn",
         "bert": "scratch:4x16", "vocab_size": 1000, "num_classes": 8, "steps": 2,
         "warmup": 1}


def define_flags():
    flags.DEFINE_list("image_size", ["384", "192"], "Image height,width (the paper: 384,192).")
    flags.DEFINE_integer("batch", 32, "Batch size of both steps (the paper: 32).")
    flags.DEFINE_string("backbone", "resnet50",
                        "config.model.backbone (resnet50 | resnet18 | small_cnn).")
    flags.DEFINE_string("bert", "scratch:12x768",
                        "scratch:LAYERSxHIDDEN, or a BERT SavedModel dir / TF-Hub handle "
                        "(e.g. demo_out/bert).")
    flags.DEFINE_integer("vocab_size", 30522, "WordPieces of a scratch BERT's vocab "
                         "(BERT-base: 30,522).")
    flags.DEFINE_boolean("bert_trainable", False,
                         "Fine-tune BERT in both steps (paper: frozen).")
    flags.DEFINE_integer("num_classes", 11003,
                         "Identity classifier size (CUHK-PEDES train: 11,003).")
    flags.DEFINE_integer("steps", 5, "Timed steps of each kind.")
    flags.DEFINE_integer("warmup", 2,
                         "Untimed steps of each kind first (the first one traces).")
    _small.define_flag()

TARGET = 1.05
BERT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _vocab(root: str, size: int) -> str:
    """A vocab of ``size`` tokens (the scratch BERT's embedding table is sized from it)."""
    path = os.path.join(root, "vocab.txt")
    words = SPECIAL + [f"w{i}" for i in range(size - len(SPECIAL))]
    with open(path, "w") as f:
        f.write("\n".join(words) + "\n")
    return path


def _manifest(root: str, num_classes: int) -> str:
    """The manifest Trainer reads (class count, steps per epoch); the batch is fed directly."""
    manifest = {"schema_version": records.SCHEMA_VERSION, "dataset": "bench", "skipped": [],
                "splits": {"train": {"images": 4 * num_classes, "captions": 8 * num_classes,
                                     "identities": num_classes, "shards": []}}}
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


def synthetic_batch(config, batch: int, vocab_size: int, cls_id: int, sep_id: int,
                    num_classes: int, seed: int = 0) -> dict:
    """``model.dummy_batch`` keys plus ``label``, with realistic lengths and phrases."""
    rng = np.random.default_rng(seed)
    L, M = config.data.max_len, config.data.max_phrases
    ids = np.zeros([batch, L], np.int32)
    mask = np.zeros([batch, L], np.int32)
    phrases = np.zeros([batch, M, L], np.float32)
    words = np.full([batch, L], -1, np.int32)
    for b in range(batch):
        n = int(rng.integers(20, min(40, L - 2) + 1))
        # About 1.3 WordPieces per word, as in English captions.
        words[b, 1:n + 1] = np.cumsum(rng.random(n) < 0.77) - 1
        ids[b, 0], ids[b, n + 1] = cls_id, sep_id
        ids[b, 1:n + 1] = rng.integers(len(SPECIAL), vocab_size, n)
        mask[b, :n + 2] = 1
        for p in range(min(M, int(rng.integers(3, 6)))):
            start = int(rng.integers(1, n - 2))
            phrases[b, p, start:start + int(rng.integers(2, 5))] = 1.0
        phrases[b, :, n + 1:] = 0.0  # never past the caption's last word
    labels = rng.choice(num_classes, size=(batch + 1) // 2, replace=False)
    return {
        "image": tf.constant(rng.uniform(0, 1, [batch, config.data.image_height, config.data.image_width,
                                                3]).astype(np.float32)),
        "input_word_ids": tf.constant(ids),
        "input_mask": tf.constant(mask),
        "input_type_ids": tf.zeros([batch, L], tf.int32),
        "phrase_token_mask": tf.constant(phrases),
        "token_word_index": tf.constant(np.maximum(words, -1)),
        "label": tf.constant(np.repeat(labels, 2)[:batch].astype(np.int32)),  # pairs: positives
    }


def _count(variables) -> float:
    return sum(int(np.prod(v.shape)) for v in variables) / 1e6


def bert_dims(spec: str):
    """(layers, hidden, FFN width) of a ``scratch:LxH`` or converted BERT; None if unknown."""
    if spec.startswith("scratch:"):
        layers, hidden = (int(x) for x in spec[len("scratch:"):].split("x"))
        return layers, hidden, 4 * hidden  # text._scratch_encoder's inner_dim
    path = os.path.join(spec, "assets", "bert_config.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        hf = json.load(f)["hf_config"]
    return hf["num_hidden_layers"], hf["hidden_size"], hf["intermediate_size"]


def step_flops(config, trainer, backbone, batch: int, num_classes: int):
    """{part: FLOPs of one training step} (module docstring) with ``full`` and
    ``baseline``, or None for a BERT of unknown size."""
    dims = bert_dims(config.model.bert)
    if dims is None:
        return None
    c = config
    layers, hidden, ffn = dims
    bert = batch * gpu_estimate.bert_forward(layers, hidden, ffn, c.data.max_len)
    bert *= 3 if c.model.bert_trainable else 1
    token_dim = hidden * (4 if c.model.bert_layers == "concat4" else 1)
    rows, cols = partition_grid(tuple(c.model.partition_map), c.model.word_pool,
                                c.model.word_stride)
    heads, _ = gpu_estimate.heads_forward(c, batch, rows * cols)
    heads += 2 * 2 * batch * c.model.embed_dim * (num_classes - gpu_estimate.CLASSES)
    base, _ = gpu_estimate.layer_flops(backbone)
    image, _ = gpu_estimate.layer_flops(trainer.model.image_encoder)
    parts = {"backbone": 3 * batch * base, "BERT": bert,
             "image branches and FCs": 3 * batch * (image - base),
             "text head": 3 * batch * gpu_estimate.text_head_forward(c, token_dim),
             "matching heads + classifier": 3 * heads}
    parts["full"] = sum(parts.values())
    parts["baseline"] = parts["backbone"] + bert
    return parts


def main(argv):
    del argv
    _small.apply(SMALL)
    height, width = (int(x) for x in FLAGS.image_size)
    root = tempfile.mkdtemp(prefix="bench_step_")
    scratch = FLAGS.bert.startswith("scratch:")
    config = preset("paper").replace(
        image_height=height, image_width=width, batch_size=FLAGS.batch,
        backbone=FLAGS.backbone, backbone_weights="none", bert=FLAGS.bert,
        bert_trainable=FLAGS.bert_trainable,
        vocab_file=_vocab(root, FLAGS.vocab_size) if scratch else "",
        num_classes=FLAGS.num_classes, max_steps=10 ** 6)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    t0 = time.perf_counter()
    trainer = HGANTask(config, _manifest(root, FLAGS.num_classes), strategy=strategy)
    tok = trainer.tokenizer
    vocab_size = tok.vocab_size + 1
    with strategy.scope():
        backbone = backbones.build_backbone(config.model.backbone, (height, width, 3), "none")
        bert = text.load_bert(config, vocab_size)
        bert.trainable = config.model.bert_trainable
        embedder = trainer.model.text_encoder.get_layer("token_embeddings")
        full_bert = [layer for layer in embedder.layers
                     if isinstance(layer, type(bert))]
        if len(full_bert) != 1:
            raise RuntimeError(f"expected one {type(bert).__name__} in the text encoder")
        full_bert[0].trainable = config.model.bert_trainable
        optimizer = optim.make_optimizer(config, trainer.per_epoch)
        dummy = {k: tf.zeros([1, config.data.max_len], tf.int32) for k in BERT_KEYS}
        # Weights exist before trainable_variables is read; in replica context, since a
        # restored SavedModel cannot be called in cross-replica context (see build_model).
        strategy.run(tf.function(lambda: bert(dummy)))
        base_vars = backbone.trainable_variables + bert.trainable_variables
        optimizer.build(base_vars)
    build_s = time.perf_counter() - t0

    def base_replica_step(batch):
        with tf.GradientTape() as tape:
            feature_map = backbone(batch["image"], training=True)
            tokens = text.select_layers(
                bert({k: batch[k] for k in BERT_KEYS}, training=True), config.model.bert_layers)
            loss = tf.reduce_mean(feature_map) + tf.reduce_mean(tokens)
            l2 = optim.l2_term(config, base_vars)  # the full step's coupled weight decay
            if l2 is not None:
                loss += l2
        grads = tape.gradient(loss, base_vars)
        optimizer.apply_gradients(
            [(g, v) for g, v in zip(grads, base_vars) if g is not None])
        return loss

    @tf.function
    def base_step(batch):
        return strategy.reduce("MEAN", strategy.run(base_replica_step, args=(batch,)),
                               axis=None)

    batch = synthetic_batch(config, FLAGS.batch, vocab_size, tok.cls_id, tok.sep_id,
                            FLAGS.num_classes)
    peak = matmul_peak_gflops(*((512, 3) if FLAGS.small else ()))
    flops = step_flops(config, trainer, backbone, FLAGS.batch, FLAGS.num_classes)
    steps = {"baseline": lambda: float(base_step(batch)),
             "full": lambda: float(trainer.train_step("train", batch)["total"])}
    times = {name: [] for name in steps}
    first = {}
    for name, step in steps.items():
        for i in range(FLAGS.warmup):
            t0 = time.perf_counter()
            step()
            if i == 0:
                first[name] = time.perf_counter() - t0
    for _ in range(FLAGS.steps):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    print(f"config: {config.model.backbone} at {height}x{width}, batch {FLAGS.batch}, "
          f"bert={config.model.bert} ({config.model.bert_layers}, "
          f"{'trainable' if config.model.bert_trainable else 'frozen'}), "
          f"{FLAGS.num_classes} identities; Adam, weight decay {config.train.weight_decay:g} "
          f"({config.train.weight_decay_mode}); built both in {build_s:.0f} s")
    print(f"trainable parameters: full {_count(trainer.model.trainable_variables):.1f} M, "
          f"baseline {_count(base_vars):.1f} M")
    for name in steps:
        ts = np.array(times[name]) * 1e3
        print(f"{name:>8}: median {np.median(ts):8.0f} ms/step  (mean {ts.mean():.0f}, "
              f"min {ts.min():.0f}, max {ts.max():.0f} over {len(ts)} steps; first step "
              f"incl. tracing {first.get(name, float('nan')):.0f} s) = "
              f"{FLAGS.batch / np.median(ts) * 1e3:.2f} images/s")
    if flops is None:
        print(f"FLOPs: not counted for bert={config.model.bert} (no scratch spec or "
              "assets/bert_config.json)")
    else:
        print("GFLOP a step by part: " + ", ".join(
            f"{name} {count / 1e9:,.1f}" for name, count in flops.items()
            if name not in ("full", "baseline")))
        for name in ("full", "baseline"):
            count = flops[name]
            rate = count / statistics.median(times[name]) / 1e9
            print(f"{name:>8}: {count / 1e9:,.1f} GFLOP a step -> {rate:,.1f} GFLOP/s = "
                  f"{100 * rate / peak:.1f} % of the float32 matmul peak measured in this "
                  f"process ({peak:,.0f} GFLOP/s)")
    ratio = statistics.median(times["full"]) / statistics.median(times["baseline"])
    print(f"ratio full / backbones: {ratio:.2f}   (target <= {TARGET:.2f}: "
          f"{'met' if ratio <= TARGET else 'NOT met'})")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
