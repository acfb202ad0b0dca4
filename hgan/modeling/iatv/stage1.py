"""IATV stage 1 (§3.1, Fig. 2): a loosely coupled CNN–LSTM trained with the CMCE loss.

The visual CNN and the word-LSTM map an image and a description independently into a
``iatv_embed_dim``-d (512, §4.2) joint space, both l2-normalised; the CMCE loss (Eqs. 1–3,
``hgan.modeling.losses.cmce_loss``) compares each with the identity buffers of the other modality
(``hgan.training.buffers``), which are updated after every step.
"""
from __future__ import annotations


from hgan.config import Config
from hgan.modeling import backbones
from hgan.tf_compat import keras, tf

BACKBONES = ("vgg16", "googlenet", "inception_v3") + backbones.BACKBONES
# §4.2's GoogLeNet (Inception v1) for CUB / Flowers, as a TF-Hub image feature vector
# module (TF2 SavedModel) called with return_endpoints=True; backbone_weights may name it
# or a local copy. "inception (5b)", the paper's last inception block, is slim's Mixed_5c.
GOOGLENET = "https://tfhub.dev/google/imagenet/inception_v1/feature_vector/5"
GOOGLENET_REGIONS = "InceptionV1/Mixed_5c"


@keras.utils.register_keras_serializable(package="hgan")
class L2Normalize(keras.layers.Layer):
    """x / ‖x‖ along the last axis (§4.2: both modalities' features are l2-normalised)."""

    def call(self, x):
        return tf.math.l2_normalize(x, axis=-1)


def _flatten_regions(feature_map):
    """[B, h, w, C] → [B, h·w, C], the region features I = {i_1 … i_L} of §3.2.1."""
    shape = tf.shape(feature_map)
    return tf.reshape(feature_map, [shape[0], shape[1] * shape[2], feature_map.shape[-1]])


def _vgg16(config: Config, image):
    """VGG-16 up to "drop7" (§4.2) → (pool5 map, drop7 [B, fc_units]).

    Conv layers from ``keras.applications.VGG16(include_top=False)``; pool5 is resized
    (area, i.e. adaptive average pooling as torchvision's VGG does) to 7×7 so fc6 keeps its
    ImageNet shape at any input size; fc6–drop6–fc7–drop7 (dropout 0.5, as in VGG).
    ``backbone_weights``: "imagenet" or a path to the with-top Keras VGG-16 weights file
    (conv layers and fc6/fc7 are copied from it; fc units must then be 4096), or "none".
    """
    weights = config.model.backbone_weights
    backbones.check_weights(weights)
    shape = (config.data.image_height, config.data.image_width, 3)
    conv = keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    pool5 = conv(image)
    x = keras.layers.Resizing(7, 7, interpolation="area", name="pool5_7x7")(pool5)
    x = keras.layers.Flatten(name="flatten")(x)
    fc6 = keras.layers.Dense(config.model.fc_units, activation="relu", name="fc6")
    x = keras.layers.Dropout(0.5, name="drop6")(fc6(x))
    fc7 = keras.layers.Dense(config.model.fc_units, activation="relu", name="fc7")
    drop7 = keras.layers.Dropout(0.5, name="drop7")(fc7(x))
    if weights not in ("none", ""):
        if config.model.fc_units != 4096:
            raise ValueError("pretrained VGG-16 fc6/fc7 need model.fc_units=4096")
        reference = keras.applications.VGG16(include_top=True, weights=weights)
        for layer in conv.layers:
            if layer.weights:
                layer.set_weights(reference.get_layer(layer.name).get_weights())
        # fc6/fc7 are built by the functional call above, so their weights exist.
        fc6.set_weights(reference.get_layer("fc1").get_weights())
        fc7.set_weights(reference.get_layer("fc2").get_weights())
    return pool5, drop7


def _inception_v3(config: Config, image):
    """GoogLeNet stand-in: ``keras.applications`` has no Inception v1 (GoogLeNet, §4.2 for
    CUB / Flowers), so InceptionV3 is used; its last mixed block stands for "inception (5b)"
    (stage-2 regions) and its global average pool for "avgpool" (the stage-1 feature)."""
    weights = config.model.backbone_weights
    backbones.check_weights(weights)
    local_file = weights not in ("imagenet", "none", "")
    net = keras.applications.InceptionV3(
        include_top=False, input_shape=(config.data.image_height, config.data.image_width, 3),
        weights="imagenet" if weights == "imagenet" else None)
    if local_file:
        net.load_weights(weights)
    feature_map = net(image)
    return feature_map, keras.layers.GlobalAveragePooling2D(name="avgpool")(feature_map)


def without_pretrained(config: Config) -> Config:
    """``config`` for a tower whose weights will be copied or restored: no pretrained
    weights, except for ``googlenet``, whose TF-Hub module is the architecture too."""
    if config.model.backbone == "googlenet":
        return config
    return config.replace(backbone_weights="none")


def _googlenet(config: Config, image):
    """§4.2's GoogLeNet from TF-Hub: ``backbone_weights`` "imagenet" = ``GOOGLENET``, else a
    handle or a local SavedModel dir of the same API. Its ``default`` output (the 1024-d
    global average pool) is the stage-1 feature ("avgpool"), ``GOOGLENET_REGIONS`` the
    stage-2 regions ("inception (5b)"). Fine-tuned with the CNN's SGD, as §4.2 trains it."""
    import tensorflow_hub as hub
    weights = config.model.backbone_weights
    if weights in ("none", ""):
        raise ValueError("backbone=googlenet is the pretrained TF-Hub module: "
                         "backbone_weights=imagenet (the tfhub.dev handle), another handle or "
                         "a local copy; inception_v3 (Keras, trainable from scratch) is the "
                         "offline stand-in")
    handle = GOOGLENET if weights == "imagenet" else weights
    layer = hub.KerasLayer(handle, trainable=True, arguments=dict(return_endpoints=True),
                           name="googlenet")
    endpoints = layer(image)
    if not isinstance(endpoints, dict) or GOOGLENET_REGIONS not in endpoints:
        keys = sorted(endpoints) if isinstance(endpoints, dict) else type(endpoints).__name__
        raise ValueError(f"{handle} did not return the endpoint {GOOGLENET_REGIONS!r} with "
                         f"return_endpoints=True (got {keys}); it is not an Inception v1 "
                         "image feature vector module")
    feature = keras.layers.Activation("linear", name="avgpool")(endpoints["default"])
    return endpoints[GOOGLENET_REGIONS], feature


def build_image_tower(config: Config) -> keras.Model:
    """Image [B, H, W, 3] → {"embedding": [B, E] l2-normalised, "regions": [B, N, C]}.

    ``model.backbone``: "vgg16" (the paper's CUHK-PEDES CNN; feature = drop7, regions =
    pool5), "googlenet" (§4.2's CNN for CUB / Flowers, from TF-Hub; avgpool / inception
    (5b)), "inception_v3" (its offline Keras stand-in; avgpool / last mixed block), or "resnet50" / "compact_cnn" / "small_cnn" from ``hgan.modeling.backbones``
    (global average pool / last feature map; ``compact_cnn`` is the CPU demo's,
    ``small_cnn`` the tests'). The feature is projected by one
    FC layer to the ``iatv_embed_dim`` joint space (§4.2: 512) and l2-normalised; the
    regions feed stage 2 (§4.2: "pool5" / "inception (5b)").
    """
    image = keras.Input((config.data.image_height, config.data.image_width, 3), name="image")
    if config.model.backbone == "vgg16":
        feature_map, feature = _vgg16(config, image)
    elif config.model.backbone == "googlenet":
        feature_map, feature = _googlenet(config, image)
    elif config.model.backbone == "inception_v3":
        feature_map, feature = _inception_v3(config, image)
    elif config.model.backbone in backbones.BACKBONES:
        feature_map = backbones.build_backbone(
            config.model.backbone, (config.data.image_height, config.data.image_width, 3),
            config.model.backbone_weights)(image)
        feature = keras.layers.GlobalAveragePooling2D(name="avgpool")(feature_map)
    else:
        raise ValueError(f"unknown model.backbone {config.model.backbone!r}; "
                         f"choose from {BACKBONES}")
    embedding = keras.layers.Dense(config.model.embed_dim, name="image_embed")(feature)
    embedding = L2Normalize(name="image_l2")(embedding)
    regions = keras.layers.Lambda(_flatten_regions, name="regions")(feature_map)
    return keras.Model(image, {"embedding": embedding, "regions": regions},
                       name="iatv_image_tower")


def build_text_tower(config: Config, vocab_size: int) -> keras.Model:
    """Token ids + mask [B, L] → [B, E] l2-normalised (§3.1, §4.2).

    Word embedding (the FC on one-hot words of §3.2.1) → word-LSTM; the hidden state at the
    last valid token encodes the sentence (§4.2), then one FC to the joint space and l2.
    The tokenizer's [CLS] / [SEP] stay in as sentence-boundary tokens.
    """
    L = config.data.max_len
    word_ids = keras.Input((L,), dtype=tf.int32, name="input_word_ids")
    mask = keras.Input((L,), dtype=tf.int32, name="input_mask")
    words = keras.layers.Embedding(vocab_size, config.model.word_dim,
                                   name="word_embedding")(word_ids)
    seq_mask = keras.layers.Lambda(lambda m: tf.cast(m, tf.bool), name="seq_mask")(mask)
    # A masked Keras LSTM carries its state over padded steps: the output is the last
    # valid step's hidden state.
    hidden = keras.layers.LSTM(config.model.lstm_units, name="word_lstm")(words, mask=seq_mask)
    embedding = keras.layers.Dense(config.model.embed_dim, name="text_embed")(hidden)
    embedding = L2Normalize(name="text_l2")(embedding)
    return keras.Model({"input_word_ids": word_ids, "input_mask": mask}, embedding,
                       name="iatv_text_tower")


class Stage1(keras.Model):
    """The stage-1 CNN–LSTM (§3.1).

    ``encode_image(image)`` → [B, E]; ``encode_regions(image)`` → [B, N, C] (the CNN's
    region features, stage 2's input); ``encode_text(inputs)`` → [B, E], where ``inputs``
    has ``hgan.modeling.hgan.model.TEXT_KEYS`` (only ``input_word_ids`` and ``input_mask`` are
    read);
    ``call(batch)`` → {"image": [B, E], "text": [B, E]} (the CMCE loss of Eq. 3 is
    ``hgan.modeling.losses.cmce_loss``, applied by ``hgan.training.iatv_task``).
    """

    def __init__(self, config: Config, vocab_size: int, **kwargs):
        super().__init__(name=kwargs.pop("name", "iatv_stage1"), **kwargs)
        self.config = config
        self.vocab_size = vocab_size
        self.image_tower = build_image_tower(config)
        self.text_tower = build_text_tower(config, vocab_size)

    def get_config(self):
        return {"config": self.config.to_dict(), "vocab_size": self.vocab_size}

    @classmethod
    def from_config(cls, config):
        return cls(Config.from_dict(config["config"]), config["vocab_size"])

    def encode_image(self, image, training=None):
        return self.image_tower(image, training=training)["embedding"]

    def encode_regions(self, image, training=None):
        return self.image_tower(image, training=training)["regions"]

    def encode_text(self, inputs, training=None):
        return self.text_tower({k: inputs[k] for k in ("input_word_ids", "input_mask")},
                               training=training)

    def call(self, inputs, training=None):
        return {"image": self.encode_image(inputs["image"], training=training),
                "text": self.encode_text(inputs, training=training)}


def build_stage1(config: Config, vocab_size: int) -> Stage1:
    """A ``Stage1`` with every weight created (one dummy batch of 2)."""
    model = Stage1(config, vocab_size)
    model({"image": tf.zeros([2, config.data.image_height, config.data.image_width, 3]),
           "input_word_ids": tf.zeros([2, config.data.max_len], tf.int32),
           "input_mask": tf.ones([2, config.data.max_len], tf.int32)}, training=False)
    return model
