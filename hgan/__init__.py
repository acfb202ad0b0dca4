"""HGAN (Zheng et al., ACM MM 2020) and IATV (Li et al., ICCV 2017) in TF2 / tf_keras.

Importing the package sets TensorFlow's environment before anything imports TensorFlow
(``hgan.tf_compat`` says why), without importing it: the commands' ``--help`` stays fast.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
