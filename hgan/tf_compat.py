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

__all__ = ["tf", "keras"]
