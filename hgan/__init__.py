"""HGAN (Zheng et al., ACM MM 2020) and IATV (Li et al., ICCV 2017) in TF2 / tf_keras."""
from hgan import tf_compat as _tf_compat  # noqa: F401  (sets TF_USE_LEGACY_KERAS first)
