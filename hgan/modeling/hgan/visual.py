"""Visual tower of HGAN (§3.2 "Learning Visual Representation", Eq. 1, Table 4)."""
from __future__ import annotations

from hgan.config import Config
from hgan.modeling import backbones
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
    partitions the map is resized to ``config.model.partition_map`` (default 16×8), the map size
    over which Table 4's kernel/stride rows give exactly its region counts.
    """
    backbone = backbones.build_backbone(
        config.model.backbone, (config.data.image_height, config.data.image_width, 3),
        config.model.backbone_weights,
        config.model.sync_batchnorm)
    image = keras.Input((config.data.image_height, config.data.image_width, 3), name="image")
    feature_map = backbone(image)
    v_global = keras.layers.GlobalAveragePooling2D(name="v_global_pool")(feature_map)
    v_global = keras.layers.Dense(config.model.embed_dim, name="v_global_fc")(v_global)
    local_map = feature_map
    if config.model.partition_map:
        size = tuple(config.model.partition_map)
        local_map = keras.layers.Resizing(*size, interpolation="bilinear",
                                          name="partition_resize")(feature_map)
    v_word = Partition(config.model.local_dim, config.model.word_pool, config.model.word_stride,
                       name="partition_word")(local_map)
    v_phrase = Partition(config.model.local_dim, config.model.phrase_pool,
                         config.model.phrase_stride, name="partition_phrase")(local_map)
    return keras.Model(image, {"global": v_global, "word": v_word, "phrase": v_phrase},
                       name="image_encoder")
