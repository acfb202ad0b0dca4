"""A run's configuration: its sections, the ``Config`` object, the presets and the papers'
table rows.

* ``sections``: the frozen dataclasses (``DataConfig``, ``HGANModel``, ``IATVModel``,
  ``TrainConfig``, ``EvalConfig``) and ``MODEL_SECTIONS``, the one list of model families;
* ``base``: ``Config``, ``--set`` parsing, config.json;
* ``presets``: ``paper`` / ``demo`` / ``tiny`` per family, and ``resolve``;
* ``experiments``: every table row of both papers by name, with the paper's figures.
"""
from hgan.config.base import CONFIG_FILE, Config, ConfigError, parse_overrides
from hgan.config.presets import PRESET_NAMES, preset, resolve
from hgan.config.sections import (FAMILY_NAMES, MODEL_SECTIONS, DataConfig, EvalConfig,
                                  HGANModel, IATVModel, TrainConfig)

__all__ = ["CONFIG_FILE", "Config", "ConfigError", "parse_overrides", "PRESET_NAMES",
           "preset", "resolve", "FAMILY_NAMES", "MODEL_SECTIONS", "DataConfig",
           "EvalConfig", "HGANModel", "IATVModel", "TrainConfig"]
