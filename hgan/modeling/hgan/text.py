"""Text tower of HGAN (§3.2 "Learning Textual Representation", Table 2)."""
from __future__ import annotations

import os

from official.nlp.modeling import layers as nlp_layers
from official.nlp.modeling import networks as nlp_networks

from hgan.config import Config
from hgan.data.tokenization import longest_caption
from hgan.layers.bilstm import BiLSTM
from hgan.tf_compat import keras, tf

_SCRATCH = "scratch:"


def _scratch_encoder(spec: str, vocab_size: int, max_len: int,
                     dropout: float) -> keras.layers.Layer:
    """``scratch:LxH`` — a randomly initialised BertEncoder of L layers, width H (tests and
    from-scratch ablations; no checkpoint needed)."""
    try:
        layers_, hidden = (int(x) for x in spec[len(_SCRATCH):].split("x"))
    except ValueError as e:
        raise ValueError(f"bert={spec!r}: expected scratch:LAYERSxHIDDEN, e.g. scratch:2x32") from e
    return nlp_networks.BertEncoder(
        vocab_size=vocab_size, hidden_size=hidden, num_layers=layers_,
        num_attention_heads=max(1, hidden // 16), inner_dim=hidden * 4,
        max_sequence_length=max(max_len, 16), type_vocab_size=2, dict_outputs=True,
        output_dropout=dropout, attention_dropout=dropout)


def load_bert(config: Config, vocab_size: int) -> keras.layers.Layer:
    """The BERT encoder: a TF-Hub handle, a local SavedModel dir with the TF-Hub BERT
    interface (``data_prep.convert_bert`` writes one), or ``scratch:LxH``."""
    if config.model.bert.startswith(_SCRATCH):
        encoder = _scratch_encoder(config.model.bert, vocab_size, config.data.max_len,
                                   config.model.dropout)
        encoder.trainable = config.model.bert_trainable
        return encoder
    import tensorflow_hub as hub
    if "://" not in config.model.bert and not os.path.isdir(config.model.bert):
        raise FileNotFoundError(f"bert={config.model.bert!r} is neither a URL nor a directory")
    # Loaded by hub.load and handed over: given a path or handle, KerasLayer first tries
    # Keras 3's `keras.saving.legacy` (absent), whose import alone (Keras 3, scikit-learn,
    # SciPy) took 0.9 s of every process that builds the model.
    return hub.KerasLayer(hub.load(config.model.bert), trainable=config.model.bert_trainable,
                          name="bert")


def select_layers(outputs: dict, choice: str):
    """Table 2: the last hidden layer, the second-to-last, or the concat of the last four."""
    layers_ = outputs["encoder_outputs"]
    if choice == "last":
        return layers_[-1]
    if choice == "second_to_last":
        if len(layers_) < 2:
            raise ValueError("bert_layers=second_to_last needs a BERT of >= 2 layers")
        return layers_[-2]
    if choice == "concat4":
        if len(layers_) < 4:
            raise ValueError("bert_layers=concat4 needs a BERT of >= 4 layers")
        return tf.concat(layers_[-4:], axis=-1)
    raise ValueError(f"unknown bert_layers {choice!r}")


@keras.utils.register_keras_serializable(package="hgan")
class PhrasePooling(keras.layers.Layer):
    """Noun-phrase embeddings from the sentence's token embeddings.

    Inputs: tokens [B, L, D] and ``phrase_token_mask`` [B, M, L] (tokens of each phrase).
    Output: [B, M, D], the mean of each phrase's tokens (zeros for an empty phrase slot).
    """

    def call(self, inputs):
        tokens, membership = inputs
        membership = tf.cast(membership, tokens.dtype)
        total = tf.einsum("bml,bld->bmd", membership, tokens)
        count = tf.reduce_sum(membership, axis=-1, keepdims=True)
        return total / tf.maximum(count, 1.0)


@keras.utils.register_keras_serializable(package="hgan")
class WordPooling(keras.layers.Layer):
    """Word vectors from WordPiece vectors: the mean of each word's pieces.

    Inputs: tokens [B, L, D] and ``token_word_index`` [B, L] (a token's word, -1 for none).
    Outputs: words [B, W, D] and their mask [B, W], W = the batch's largest word count
    (at least 1), or ``slots`` when given (a static shape, for XLA); word w of a caption
    sits in slot w, empty slots are zeros with mask 0.
    """

    def __init__(self, slots=None, **kwargs):
        super().__init__(**kwargs)
        self.slots = None if slots is None else int(slots)

    def call(self, inputs):
        tokens, index = inputs
        index = tf.cast(index, tf.int32)
        slots = self.slots or tf.maximum(tf.reduce_max(index) + 1, 1)
        membership = tf.one_hot(index, slots, dtype=tokens.dtype)  # [B, L, W]; -1 → zeros
        total = tf.einsum("blw,bld->bwd", membership, tokens)
        count = tf.reduce_sum(membership, axis=1)  # [B, W]
        words = total / tf.maximum(count, 1.0)[..., None]
        return words, tf.cast(count > 0, tokens.dtype)

    def compute_mask(self, inputs, mask=None):
        return None

    def get_config(self):
        return {**super().get_config(), "slots": self.slots}


def _self_attention(config: Config, name: str) -> keras.layers.Layer:
    """The "one transform layer" (self-attention [29]) of §3.2 over words or phrases."""
    return nlp_layers.TransformerEncoderBlock(
        num_attention_heads=config.model.attention_heads, inner_dim=2 * config.model.local_dim,
        inner_activation="gelu", output_dropout=config.model.dropout,
        attention_dropout=config.model.dropout, name=name)


BERT_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
HEAD_INPUTS = ("input_word_ids", "input_mask", "phrase_token_mask", "token_word_index")


def build_token_embedder(config: Config, vocab_size: int) -> keras.Model:
    """``BERT_INPUTS`` [B, T] → token embeddings [B, T, D]: BERT's layers chosen per
    Table 2, or, for Table 3's rows without BERT (``use_bert=False``), trainable word
    embeddings of width 768. T is any length up to ``max_len`` (the text encoder passes
    ``max_len``; ``trimmed_tokens`` the batch's longest caption)."""
    inputs = {k: keras.Input((None,), dtype=tf.int32, name=k) for k in BERT_INPUTS}
    if config.model.use_bert:
        if config.data.text_vocab != "bert":
            raise ValueError("use_bert=true reads BERT's WordPieces: text_vocab=words needs "
                             "use_bert=false (trainable word embeddings)")
        bert = load_bert(config, vocab_size)
        tokens = select_layers(bert(inputs), config.model.bert_layers)
    else:
        tokens = keras.layers.Embedding(vocab_size, 768, name="word_embedding")(
            inputs["input_word_ids"])
    return keras.Model(inputs, tokens, name="token_embeddings")


def build_text_encoder(config: Config, vocab_size: int) -> keras.Model:
    """BERT inputs + phrase membership → {global, word, word_mask, phrase, phrase_mask}:
    ``build_token_embedder`` then ``build_text_head``, two nested models (a frozen BERT's
    token embeddings can be computed once and fed to the head alone,
    ``hgan.training.hgan_token_cache``).
    """
    L, M = config.data.max_len, config.data.max_phrases
    inputs = {k: keras.Input((L,), dtype=tf.int32, name=k) for k in BERT_INPUTS}
    inputs["phrase_token_mask"] = keras.Input((M, L), dtype=tf.float32,
                                              name="phrase_token_mask")
    inputs["token_word_index"] = keras.Input((L,), dtype=tf.int32, name="token_word_index")
    tokens = build_token_embedder(config, vocab_size)({k: inputs[k] for k in BERT_INPUTS})
    if tokens.shape[-1] is None:
        raise ValueError(f"bert={config.model.bert!r}: its token embeddings have no static width")
    head = build_text_head(config, int(tokens.shape[-1]))
    outputs = head({"tokens": tokens, **{k: inputs[k] for k in HEAD_INPUTS}})
    return keras.Model(inputs, outputs, name="text_encoder")


def build_text_head(config: Config, token_dim: int) -> keras.Model:
    """Token embeddings [B, L, D] (+ ``HEAD_INPUTS``) → the text features of HGAN.

    * T_w [B, L, C']: the keys of Eqs. 2–8 are words: ``word_keys="words"`` (default)
      averages each word's WordPieces (``token_word_index``; punctuation, [CLS], [SEP] and
      padding are no word), ``"wordpieces"`` keeps one key per WordPiece token as before;
      then FC to C' and one self-attention layer among the words. ``word_mask`` [B, L]
      marks the real word slots.
    * T_g: a bi-LSTM over the token embeddings, concat(forward last, backward first), then
      an FC to the sentence-level joint space [B, C_embed].
    * T_p [B, M, C']: phrase embeddings (mean of their tokens) → FC → one self-attention
      layer over the M phrases; ``phrase_mask`` [B, M] marks the real phrases.
    """
    L, M = config.data.max_len, config.data.max_phrases
    tokens = keras.Input((L, token_dim), dtype=tf.float32, name="tokens")
    word_ids = keras.Input((L,), dtype=tf.int32, name="input_word_ids")
    mask = keras.Input((L,), dtype=tf.int32, name="input_mask")
    membership = keras.Input((M, L), dtype=tf.float32, name="phrase_token_mask")
    token_words = keras.Input((L,), dtype=tf.int32, name="token_word_index")

    # The word branch and the LSTM run only to the batch's longest caption: padding is
    # masked out of the self-attention and never read by the LSTM, so the outputs at real
    # tokens are unchanged, and padded word slots come back as zeros (masked downstream).
    # Under train.jit_compile the shapes stay static for XLA: max_len tokens and max_len
    # word slots, the slots past the batch's longest caption then holding what the word
    # branch makes of empty slots, masked downstream like every padded slot.
    static = config.train.jit_compile
    trimmed, trimmed_mask = keras.layers.Lambda(
        _full_length if static else _trim_padding, name="trim_padding")([tokens, mask])
    attention_mask = keras.layers.Lambda(
        lambda m: tf.cast(m[:, None, :] & m[:, :, None], tf.float32), name="pair_mask",
        dtype="float32")(trimmed_mask)
    if config.model.word_keys == "words":
        word_inputs, word_mask = WordPooling(slots=L if static else None,
                                             name="word_pool")([tokens, token_words])
        word_attention = keras.layers.Lambda(
            lambda m: m[:, None, :] * m[:, :, None] + tf.eye(tf.shape(m)[1])[None],
            name="word_pair_mask", dtype="float32")(word_mask)
    elif config.model.word_keys == "wordpieces":
        word_inputs, word_attention = trimmed, attention_mask
        word_mask = keras.layers.Lambda(_real_words, name="word_mask", dtype="float32")(
            [word_ids, mask])
    else:
        raise ValueError("word_keys must be 'words' or 'wordpieces', got "
                         f"{config.model.word_keys!r}")
    words = keras.layers.Dense(config.model.local_dim, name="word_fc")(word_inputs)
    words = _self_attention(config, "word_attention")([words, word_attention])
    words = keras.layers.Lambda(lambda w: _pad_to_length(w, L), name="pad_words")(words)
    if config.model.word_keys == "words":
        word_mask = keras.layers.Lambda(lambda m: _pad_to_length(m[..., None], L)[..., 0],
                                        name="word_mask", dtype="float32")(word_mask)

    t_global = BiLSTM(config.model.lstm_units, name="bilstm")(trimmed, mask=trimmed_mask)
    t_global = keras.layers.Dense(config.model.embed_dim, name="t_global_fc")(t_global)

    phrases = PhrasePooling(name="phrase_pool")([tokens, membership])
    phrases = keras.layers.Dense(config.model.local_dim, name="phrase_fc")(phrases)
    phrase_mask = keras.layers.Lambda(
        lambda m: tf.cast(tf.reduce_sum(m, -1) > 0, tf.float32), name="phrase_mask",
        dtype="float32")(membership)
    phrase_pair = keras.layers.Lambda(
        lambda m: m[:, None, :] * m[:, :, None] + tf.eye(M)[None], name="phrase_pair_mask",
        dtype="float32")(
            phrase_mask)  # the diagonal keeps empty phrase slots from attending to nothing
    phrases = _self_attention(config, "phrase_attention")([phrases, phrase_pair])

    inputs = {"tokens": tokens, "input_word_ids": word_ids, "input_mask": mask,
              "phrase_token_mask": membership, "token_word_index": token_words}
    outputs = {"global": t_global, "word": words, "word_mask": word_mask,
               "phrase": phrases, "phrase_mask": phrase_mask}
    return keras.Model(inputs, outputs, name="text_head")


def trimmed_tokens(embedder: keras.Model, inputs: dict, length: int, training=None):
    """The token embeddings [B, ``length``, D] of ``embedder`` (``build_token_embedder``)
    with BERT run on the batch's longest caption only, zeros after it. A caption's real
    tokens attend to real tokens only, so their embeddings are the full-length call's
    (to float rounding); padded slots are zeros instead of BERT's outputs there, which
    the head masks (its features at masked slots may differ; the scores do not). For one
    18-token caption at max_len 40, MiniLM's 9.6 ms become 6.7."""
    longest = longest_caption(inputs["input_mask"])
    tokens = embedder({k: inputs[k][:, :longest] for k in BERT_INPUTS}, training=training)
    return _pad_to_length(tokens, length)


def _trim_padding(args):
    tokens, mask = args
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(mask, tf.int32), axis=-1))
    return tokens[:, :longest], tf.cast(mask[:, :longest], tf.bool)


def _full_length(args):
    """``_trim_padding`` without the trim: every max_len slot, a static shape for XLA."""
    tokens, mask = args
    return tokens, tf.cast(mask, tf.bool)


def _pad_to_length(x, length: int):
    """[B, T, C] → [B, length, C], zeros after T (static shape restored)."""
    x = tf.pad(x, [[0, 0], [0, length - tf.shape(x)[1]], [0, 0]])
    return tf.reshape(x, [-1, length, x.shape[-1]])


def _real_words(args):
    """1 for word tokens, 0 for [CLS], [SEP] and padding: input_mask minus the first token
    and the last real one."""
    _, mask = args
    mask = tf.cast(mask, tf.float32)
    length = tf.reduce_sum(mask, axis=-1, keepdims=True)
    position = tf.cast(tf.range(tf.shape(mask)[1])[None, :], tf.float32)
    return mask * tf.cast((position > 0) & (position < length - 1), tf.float32)
