"""Visual tower of HGAN (§3.2 "Learning Visual Representation", Eq. 1, Table 4)."""
from __future__ import annotations

import os

from hgan.config import Config
from hgan.tf_compat import keras, tf


def partition_grid(map_size, pool, stride) -> tuple[int, int]:
    """Regions H'×W' of VALID pooling with ``pool``/``stride`` over a map ``map_size``.

    Over the 16×8 map the partition step uses, the six rows of Table 4 give 8×4, 7×3, 5×3,
    4×2, 7×1 and 5×1 regions.
    """
    (h, w), (ph, pw), (sh, sw) = map_size, pool, stride
    if ph > h or pw > w:
        raise ValueError(f"pool {pool} larger than the feature map {map_size}")
    return (h - ph) // sh + 1, (w - pw) // sw + 1


def build_backbone(config: Config) -> keras.Model:
    """Image [H, W, 3] → feature map V [h, w, C] before the last pooling (§3.2); with
    ``config.sync_batchnorm`` its BatchNorm layers normalise over all replicas' batch."""
    net = _backbone(config)
    if config.sync_batchnorm and config.backbone != "resnet18":  # resnet18: use_sync_bn
        net = synchronize_batchnorm(net)
    return net


def synchronize_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of a functional ``model`` (same weights) whose BatchNormalization layers
    compute training statistics over the global batch of all replicas
    (``synchronized=True``, an all-reduce per layer) instead of each replica's slice."""
    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, keras.layers.BatchNormalization):
            config.update(synchronized=True, fused=None)
        return layer.__class__.from_config(config)

    synced = keras.models.clone_model(model, clone_function=clone)
    synced.set_weights(model.get_weights())
    return synced


def _backbone(config: Config) -> keras.Model:
    shape = (config.image_height, config.image_width, 3)
    weights = config.backbone_weights
    if config.backbone == "resnet50":
        local_file = weights not in ("imagenet", "none", "")
        if local_file and not os.path.exists(weights):
            raise FileNotFoundError(f"backbone_weights file {weights} not found")
        net = keras.applications.ResNet50(
            include_top=False, input_shape=shape,
            weights="imagenet" if weights == "imagenet" else None)
        if local_file:
            net.load_weights(weights)
        return net
    if config.backbone == "resnet18":
        from official.vision.modeling.backbones import resnet
        inputs = keras.Input(shape)
        net = resnet.ResNet(model_id=18, input_specs=keras.layers.InputSpec(shape=(None, *shape)),
                            use_sync_bn=config.sync_batchnorm)
        if weights not in ("none", ""):
            if weights == "imagenet":
                raise ValueError("no offline ImageNet weights for resnet18; pass a file or none")
            net.load_weights(weights)
        return keras.Model(inputs, net(inputs)["5"], name="resnet18")
    if config.backbone == "compact_cnn":
        return compact_cnn(shape)
    if config.backbone == "small_cnn":
        # CPU demo and tests: three strided conv blocks, output stride 8 (16×8 at 128×64).
        inputs = keras.Input(shape)
        x = inputs
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=CPU_BN_MOMENTUM)(x)
            x = keras.layers.ReLU()(x)
        return keras.Model(inputs, x, name="small_cnn")
    raise ValueError(f"unknown backbone {config.backbone!r}")


# BatchNorm momentum of the from-scratch CPU backbones. Their runs are a few hundred steps
# while the weights move fast: with Keras's 0.99 the moving statistics trail the weights by
# ~100 steps, and inference normalised with stale statistics collapsed the demo's image
# embeddings (mean pairwise cosine 0.82 on the test images with the moving statistics,
# 0.10 with the batch's own; scripts/diagnose.py's "spread").
CPU_BN_MOMENTUM = 0.9


def compact_cnn(shape, widths=(32, 64, 128)) -> keras.Model:
    """The CPU demo's backbone: three stages of two 3×3 conv–BN–ReLU (the first strided),
    then two 3×3 convs dilated 2 and 4; output stride 8 (16×8 at 128×64). Each map cell
    sees about 139 px, the whole 128-px figure, as ResNet-50's cells do at 384×192, so
    features can say where on the body a colour is (a red top vs red trousers), which the
    three-layer ``small_cnn`` (15 px) cannot."""
    inputs = keras.Input(shape)
    x = inputs

    def conv(x, filters, stride=1, dilation=1):
        x = keras.layers.Conv2D(filters, 3, strides=stride, dilation_rate=dilation,
                                padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=CPU_BN_MOMENTUM)(x)
        return keras.layers.ReLU()(x)

    for filters in widths:
        x = conv(conv(x, filters, stride=2), filters)
    x = conv(conv(x, widths[-1], dilation=2), widths[-1], dilation=4)
    return keras.Model(inputs, x, name="compact_cnn")


@keras.utils.register_keras_serializable(package="hgan")
class Partition(keras.layers.Layer):
    """One partition branch of Eq. 1: V_x = GAP_x(V) ∈ R^{N_v × C'}.

    Average pooling (kernel ``pool``, stride ``stride``, VALID) over the map, then a 1×1
    convolution C → C', flattened to N_v = H'·W' region vectors [B, N_v, C'].
    """

    def __init__(self, dim: int, pool, stride, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.pool, self.stride = int(dim), tuple(pool), tuple(stride)
        self.pooling = keras.layers.AveragePooling2D(self.pool, self.stride, padding="valid")
        self.project = keras.layers.Conv2D(self.dim, 1, name="conv1x1")

    def call(self, feature_map):
        x = self.project(self.pooling(feature_map))
        return tf.reshape(x, [tf.shape(x)[0], -1, self.dim])

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "pool": self.pool,
                "stride": self.stride}


def build_image_encoder(config: Config) -> keras.Model:
    """Image → {global [B, C_embed], word [B, N_v, C'], phrase [B, N_v, C']}.

    V_g = avgpool(V) then an FC to the sentence-level joint space; V_w and V_p from two
    ``Partition`` branches with their own pooling and 1×1 conv (Eq. 1). Before the
    partitions the map is resized to ``config.partition_map`` (default 16×8), the map size
    over which Table 4's kernel/stride rows give exactly its region counts.
    """
    backbone = build_backbone(config)
    image = keras.Input((config.image_height, config.image_width, 3), name="image")
    feature_map = backbone(image)
    v_global = keras.layers.GlobalAveragePooling2D(name="v_global_pool")(feature_map)
    v_global = keras.layers.Dense(config.embed_dim, name="v_global_fc")(v_global)
    local_map = feature_map
    if config.partition_map:
        size = tuple(config.partition_map)
        local_map = keras.layers.Resizing(*size, interpolation="bilinear",
                                          name="partition_resize")(feature_map)
    v_word = Partition(config.local_dim, config.word_pool, config.word_stride,
                       name="partition_word")(local_map)
    v_phrase = Partition(config.local_dim, config.phrase_pool, config.phrase_stride,
                         name="partition_phrase")(local_map)
    return keras.Model(image, {"global": v_global, "word": v_word, "phrase": v_phrase},
                       name="image_encoder")
