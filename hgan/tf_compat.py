"""The project's single import point for TensorFlow and Keras.

Every module does ``from hgan.tf_compat import tf, keras``. Keras 2 (``tf_keras``) is used
throughout because ``hub.KerasLayer`` and the ``official.*`` models are ``tf_keras``
objects; mixing them with Keras 3 breaks. ``TF_USE_LEGACY_KERAS`` must be set before
TensorFlow is first imported: ``hgan/__init__.py``, which runs before this module, sets it.

``TF_ENABLE_ONEDNN_OPTS=1`` (unless already set): TensorFlow uses its oneDNN kernels by
default only on some Intel CPUs; elsewhere (the AMD EPYC machines this project is measured
on) the Eigen fallback makes the demo's training step 1.8× slower (``bench/demo_step.py``
prints both). Results differ only by float rounding; ``TF_ENABLE_ONEDNN_OPTS=0`` opts out.
"""
import hgan  # noqa: F401  (its __init__ sets the environment above)
import tensorflow as tf
import tf_keras as keras

__all__ = ["tf", "keras", "autograph_off"]


def autograph_off():
    """A context in which Keras builds functional models without AutoGraph.

    Building a functional model calls every layer on symbolic inputs, and Keras converts
    each layer's ``call`` with AutoGraph first (source parsing and rewriting: about 0.8 s
    of the HGAN model's build, 1.9 s of a BERT's). Layers that branch on Python values only
    build the same model without it; a layer that branches on a tensor raises instead of
    building. Training and serving trace the layers again in their own ``tf.function``s,
    converted as before. (TensorFlow's own switch, ``ag_ctx``, is not public API.)
    """
    from tensorflow.python.autograph.core import ag_ctx
    return ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED)
