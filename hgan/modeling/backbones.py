"""Backbones shared by both families: image [H, W, 3] → feature map [h, w, C].

ImageNet ResNet-50 (HGAN §4), ResNet-18 (Model Garden), and two from-scratch CPU nets:
``compact_cnn`` (the demo's) and ``small_cnn`` (tests). IATV's VGG-16 and InceptionV3
towers (``hgan.modeling.iatv.stage1``) add their own heads to ``keras.applications``.
"""
from __future__ import annotations

import os

from hgan.tf_compat import keras

BACKBONES = ("resnet50", "resnet18", "compact_cnn", "small_cnn")


def build_backbone(name: str, shape, weights: str = "none",
                   sync_batchnorm: bool = False) -> keras.Model:
    """Image [H, W, 3] → feature map [h, w, C] before the last pooling (HGAN §3.2, IATV's
    region features). ``name``: one of ``BACKBONES``; ``weights``: "imagenet", "none" or a
    weights file; ``sync_batchnorm``: BatchNorm over all replicas' batch."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")
    net = _backbone(name, tuple(shape), weights, sync_batchnorm)
    if sync_batchnorm and name != "resnet18":  # resnet18: use_sync_bn
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


def check_weights(weights: str) -> None:
    """A weights file must exist ("imagenet" and "none" are not files)."""
    if weights not in ("imagenet", "none", "") and not os.path.exists(weights):
        raise FileNotFoundError(f"backbone_weights file {weights} not found")


def _backbone(name: str, shape, weights: str, sync_batchnorm: bool) -> keras.Model:
    check_weights(weights)
    if name == "resnet50":
        local_file = weights not in ("imagenet", "none", "")
        net = keras.applications.ResNet50(
            include_top=False, input_shape=shape,
            weights="imagenet" if weights == "imagenet" else None)
        if local_file:
            net.load_weights(weights)
        return net
    if name == "resnet18":
        from official.vision.modeling.backbones import resnet
        inputs = keras.Input(shape)
        net = resnet.ResNet(model_id=18, input_specs=keras.layers.InputSpec(shape=(None, *shape)),
                            use_sync_bn=sync_batchnorm)
        if weights not in ("none", ""):
            if weights == "imagenet":
                raise ValueError("no offline ImageNet weights for resnet18; pass a file or none")
            net.load_weights(weights)
        return keras.Model(inputs, net(inputs)["5"], name="resnet18")
    if name == "compact_cnn":
        return compact_cnn(shape)
    if name == "small_cnn":
        # CPU demo and tests: three strided conv blocks, output stride 8 (16×8 at 128×64).
        inputs = keras.Input(shape)
        x = inputs
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=CPU_BN_MOMENTUM)(x)
            x = keras.layers.ReLU()(x)
        return keras.Model(inputs, x, name="small_cnn")
    raise AssertionError(name)


# BatchNorm momentum of the from-scratch CPU backbones. Their runs are a few hundred steps
# while the weights move fast: with Keras's 0.99 the moving statistics trail the weights by
# ~100 steps, and inference normalised with stale statistics collapsed the demo's image
# embeddings (mean pairwise cosine 0.82 on the test images with the moving statistics,
# 0.10 with the batch's own; hgan-diagnose's "spread").
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
