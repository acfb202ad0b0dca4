"""The one configuration object of a run: ``Config``, its ``--set`` overrides and
``config.json``.

``Config`` is a frozen dataclass of five parts: ``family`` ("hgan" | "iatv", the name of
its ``hgan.config.sections.MODEL_SECTIONS`` entry), ``data``, ``model`` (the family's
section), ``train`` and ``eval``. A field is named ``section.field`` (``model.k1``), or by
its bare name where that is unique over the config's sections (``k1``). hgan-train builds
it from a preset (``hgan.config.presets``) and ``--set`` items, and saves it as
``{model_dir}/config.json``; hgan-eval and hgan-export load that file.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Union

from hgan.config.sections import (FAMILY_NAMES, MODEL_SECTIONS, SECTIONS, DataConfig,
                                  EvalConfig, HGANModel, IATVModel, TrainConfig, fields_of)

CONFIG_FILE = "config.json"
SECTION_NAMES = ("data", "model", "train", "eval")


class ConfigError(ValueError):
    """A config.json or an override that does not describe a config of this version."""


def check_family(family: str) -> str:
    if family not in MODEL_SECTIONS:
        raise ConfigError(f"unknown model family {family!r}; choose from {list(FAMILY_NAMES)}")
    return family


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on: ``family``, ``data``, ``model``, ``train``, ``eval``."""

    family: str = "hgan"
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: Union[HGANModel, IATVModel] = dataclasses.field(default_factory=HGANModel)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self):
        check_family(self.family)
        if not isinstance(self.model, MODEL_SECTIONS[self.family]):
            raise ConfigError(f"a {self.family} config needs a "
                              f"{MODEL_SECTIONS[self.family].__name__} model section, got "
                              f"{type(self.model).__name__}")

    # --- names ------------------------------------------------------------------------
    def section_classes(self) -> dict:
        """{section name: its dataclass} for this config's family."""
        return {"data": DataConfig, "model": MODEL_SECTIONS[self.family],
                "train": TrainConfig, "eval": EvalConfig}

    def locate(self, name: str) -> tuple[str, str]:
        """(section, field) of ``section.field`` or of a field name that is unique over this
        config's sections."""
        if "." in name:
            section, field = name.split(".", 1)
            cls = MODEL_SECTIONS[self.family] if section == "model" else SECTIONS.get(section)
            if cls is None or field not in fields_of(cls):
                raise ConfigError(f"unknown config field {name!r} for family "
                                  f"{self.family!r}; known: {self.names()}")
            return section, field
        owners = [s for s, cls in self.section_classes().items() if name in fields_of(cls)]
        if len(owners) != 1:
            what = "ambiguous" if owners else "unknown"
            raise ConfigError(f"{what} config field {name!r} for family {self.family!r}; "
                              f"known: {self.names()}")
        return owners[0], name

    def names(self) -> list[str]:
        """Every ``section.field`` of this config."""
        return sorted(f"{s}.{f}" for s, cls in self.section_classes().items()
                      for f in fields_of(cls))

    def get(self, name: str) -> Any:
        section, field = self.locate(name)
        return getattr(getattr(self, section), field)

    def flat(self) -> dict:
        """{"family": ..., "section.field": value, ...}."""
        out = {"family": self.family}
        for section in self.section_classes():
            out.update({f"{section}.{k}": v
                        for k, v in dataclasses.asdict(getattr(self, section)).items()})
        return out

    # --- changes ----------------------------------------------------------------------
    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes``: ``family`` (the new family's default model section, the
        other sections kept), whole sections (``data=DataConfig(...)``), or fields by their
        bare names (``k1=2``; ``section.field`` names go through ``parse_overrides`` or
        ``replace_fields``)."""
        return self.replace_fields(changes)

    def replace_fields(self, changes: dict) -> "Config":
        """``replace`` with any key ``locate`` reads, ``section.field`` included."""
        changes = dict(changes)
        config = self
        family = changes.pop("family", None)
        if family is not None and family != self.family:
            config = dataclasses.replace(self, family=check_family(family),
                                         model=MODEL_SECTIONS[family]())
        whole = {k: changes.pop(k) for k in list(changes) if k in SECTION_NAMES}
        if whole:
            config = dataclasses.replace(config, **whole)
        grouped: dict = {}
        for name, value in changes.items():
            section, field = config.locate(name)
            grouped.setdefault(section, {})[field] = value
        if grouped:
            config = dataclasses.replace(config, **{
                s: getattr(config, s).replace(**v) for s, v in grouped.items()})
        return config

    # --- config.json ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"family": self.family,
                **{s: dataclasses.asdict(getattr(self, s)) for s in self.section_classes()}}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The config of ``to_dict``'s layout; any other layout is a ``ConfigError`` that
        names what is missing or unknown."""
        if not isinstance(values, dict) or "family" not in values or "model" not in values:
            keys = sorted(values)[:8] if isinstance(values, dict) else type(values).__name__
            raise ConfigError("not a config of this version: it needs the keys 'family', "
                              f"'data', 'model', 'train', 'eval' (found {keys}); retrain, or "
                              "write the config with hgan-train's presets and --set")
        family = check_family(values["family"])
        unknown = sorted(set(values) - {"family", *SECTION_NAMES})
        if unknown:
            raise ConfigError(f"unknown config sections: {unknown}")
        sections = {"data": DataConfig, "model": MODEL_SECTIONS[family],
                    "train": TrainConfig, "eval": EvalConfig}
        built = {s: _section_from_dict(c, values.get(s, {}), s) for s, c in sections.items()}
        return cls(family=family, **built)

    def save(self, folder: str) -> str:
        """Writes ``folder/config.json`` atomically; returns its path."""
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, CONFIG_FILE)
        tmp = f"{path}.tmp{os.getpid()}"  # unique: several workers may save at once
        with open(tmp, "w") as f:
            f.write(self.to_json())
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, folder: str) -> "Config":
        """The config in ``folder/config.json`` (a model_dir, or an export's assets.extra),
        read once per process while the file is unchanged (a frozen object: every step of
        a command can share it)."""
        path = os.path.join(folder, CONFIG_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no {CONFIG_FILE} in {folder}: is it a hgan-train "
                                    "model_dir?")
        stat = os.stat(path)
        return _load(cls, path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _load(cls, path: str, mtime_ns: int, size: int) -> Config:
    del mtime_ns, size  # the cache key: a rewritten config.json is read again
    with open(path) as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not JSON: {e}") from e
    try:
        return cls.from_dict(values)
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"{path}: {e}") from e


def _section_from_dict(cls, values: dict, name: str):
    fields = fields_of(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown fields in config section {name!r}: {unknown} (known: "
                          f"{sorted(fields)})")
    return cls(**{k: tuple(v) if isinstance(fields[k].default, tuple) else v
                  for k, v in values.items()})


# --- --set overrides ----------------------------------------------------------------------
def parse_overrides(base: Config, overrides: list[str]) -> Config:
    """Applies ``["name=value", ...]`` (names as ``Config.locate`` reads them), each value
    read as the type of the field's default: tuples as ``4,4``, ``[4,4]`` or ``(4,)``
    (``none``, ``()``, ``[]`` or nothing: empty), booleans as true/false, yes/no or 1/0 in
    any case, numbers, else the string as written; a ``family=`` item switches the family
    first."""
    config = base
    items = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not field=value")
        name, raw = (part.strip() for part in item.split("=", 1))
        if name == "family":
            config = config.replace(family=raw)
        else:
            items.append((name, raw))
    changes: dict[str, Any] = {}
    for name, raw in items:
        section, field = config.locate(name)
        default = fields_of(config.section_classes()[section])[field].default
        changes[f"{section}.{field}"] = _parse_value(raw, default, name)
    return config.replace_fields(changes)


def _parse_value(raw: str, default: Any, name: str) -> Any:
    if isinstance(default, tuple):
        if raw in ("", "()", "[]", "none"):
            return ()
        parts = raw.strip("[]()").split(",")
        try:
            return tuple(type(default[0] if default else 1.0)(p) if default else _number(p)
                         for p in parts if p.strip())
        except ValueError as e:
            raise ConfigError(f"{name}: cannot parse {raw!r} as a tuple") from e
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes"):
            return True
        if raw.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{name}: expected true/false, got {raw!r}")
    if isinstance(default, (int, float)):
        try:
            return type(default)(float(raw)) if isinstance(default, float) else int(raw)
        except ValueError as e:
            raise ConfigError(f"{name}: expected a number, got {raw!r}") from e
    return raw


def _number(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value
