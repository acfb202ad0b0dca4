"""The one place a model family is chosen: ``config.family`` → its ``Family``.

A family is what differs between HGAN and IATV: the model and how it is loaded
(``hgan.modeling``), the training task the loop runs (``hgan.training``), the scorer of a
split (``hgan.evaluation``) and the serving module (``hgan.serving``). Everything else (data,
the loop, metrics, re-ranking, reports, SavedModel saving, search) is shared and never
imports a family. A family's name and config section are declared once, in
``hgan.config.sections.MODEL_SECTIONS``; its code once, here, keyed by that section
(``FAMILIES`` is built from the list). A third family adds a section to the list and its
code here.

``train``, ``evaluate`` and ``export`` are what hgan-train, hgan-eval and hgan-export call;
``load`` gives ``evaluate`` and ``export`` one model when a process does both (hgan-train
``--test_json`` / ``--export_dir``).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from hgan.config import MODEL_SECTIONS, Config, experiments
from hgan.config.sections import HGANModel, IATVModel
from hgan.data import caption_stats, pipeline
from hgan.evaluation import hgan_report, hgan_scoring, iatv_report, iatv_scoring
from hgan.evaluation import report as eval_report
from hgan.modeling.hgan import model as hgan_model
from hgan.modeling.iatv import model as iatv_model
from hgan.serving import hgan_module, iatv_module, savedmodel
from hgan.tf_compat import keras, tf
from hgan.training import loop, run_dir
from hgan.training.hgan_task import HGANTask
from hgan.training.iatv_task import IATVTask


@dataclasses.dataclass(frozen=True)
class Family:
    """What a model family plugs into the shared machinery.

    task: ``Task`` subclass, ``task(config, data_dir, val_split, strategy)``;
    load_model: ``(model_dir, which) -> (model, config, checkpoint_path)``;
    evaluate: ``(model, data_dir, config, split, modes, rerank_k) -> report``;
    exact_mode: the name of the mode that scores every pair (hgan-eval's "exact");
    servable: ``model -> (tf.Module, {signature name: tf.function with an input
      signature})``, offering the serving contract of ``hgan.serving.savedmodel``;
    report_extras: the family's part of the report: its entries, Markdown lines, levels
      ranked alone and figures (``hgan.evaluation.report.ReportExtras`` → ``Extras``), or
      None.
    """

    name: str
    task: type
    load_model: Callable
    evaluate: Callable
    exact_mode: str
    servable: Callable
    report_extras: Optional[Callable] = None


# Each family's code, keyed by its config section: the names come from MODEL_SECTIONS, the
# one list of families, so a family is named in one place.
_CODE = {
    HGANModel: dict(task=HGANTask, load_model=hgan_model.load_model,
                    evaluate=hgan_scoring.evaluate, exact_mode="exact",
                    servable=hgan_module.servable, report_extras=hgan_report.report_extras),
    IATVModel: dict(task=IATVTask, load_model=iatv_model.load_model,
                    evaluate=iatv_scoring.evaluate, exact_mode="stage1",
                    servable=iatv_module.servable, report_extras=iatv_report.report_extras),
}
FAMILIES = {name: Family(name, **_CODE[section]) for name, section in MODEL_SECTIONS.items()}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose from {sorted(FAMILIES)}")
    return FAMILIES[name]


def of_model_dir(model_dir: str) -> Family:
    return get(Config.load(model_dir).family)


def train(config: Config, data_dir: str, model_dir: str, val_split: str = "val",
          strategy: Optional[tf.distribute.Strategy] = None, log=print) -> dict:
    """Trains ``config``'s family into ``model_dir`` (resuming it), validating on
    ``val_split`` when the data has it. Logs first what the config's caps cut of the
    training captions (``caption_stats``)."""
    caption_stats.log_run_cuts(pipeline.load_manifest(data_dir), config, "train", data_dir,
                               log)
    validate = run_dir.has_validation(data_dir, val_split, log)
    task = get(config.family).task(config, data_dir, val_split if validate else None, strategy)
    return loop.fit(task, model_dir, validate=validate, log=log)


def load(model_dir: str, checkpoint: str = "best") -> tuple:
    """``model_dir``'s model at ``checkpoint`` for inference → (model, config, checkpoint
    path), as hgan-eval and hgan-export load it: built in float32 whatever the process's
    Keras policy (a mixed-precision run trained in the same process leaves
    ``mixed_float16`` global; a process of its own starts in float32)."""
    family = of_model_dir(model_dir)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        return family.load_model(model_dir, checkpoint)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def evaluate(model_dir: str, data_dir: str, split: str, output_json: str, checkpoint="best",
             rerank_k=None, modes=("exact", "two_stage"), figures=True,
             experiment: Optional[str] = None, stage1_weights=(), log=print,
             loaded: Optional[tuple] = None) -> dict:
    """hgan-eval: the report of ``model_dir``'s model on ``split`` (JSON, Markdown and, with
    ``figures``, the PNGs and the HTML page). ``experiment`` (default: the one hgan-train
    recorded in ``model_dir``) adds the paper's figures of that row beside the measured
    ones; ``stage1_weights`` (IATV) the two-stage R1 at each weight of stage 1 in the
    two-stage score. What the caps cut of the split's captions is logged first and kept in
    the report (``captions_cut``). ``loaded``: ``load(model_dir, checkpoint)``'s result
    when the caller has it (``checkpoint`` is then not read)."""
    family = of_model_dir(model_dir)
    model, config, path = loaded or load(model_dir, checkpoint)
    cut = caption_stats.log_run_cuts(pipeline.load_manifest(data_dir), config, split,
                                     data_dir, log)
    modes = tuple(dict.fromkeys(family.exact_mode if m == "exact" else m for m in modes))
    options = {}
    if stage1_weights:
        if config.family != "iatv":
            raise ValueError("stage1_weights sweeps IATV's two-stage score; "
                             f"{model_dir} is a {config.family} model")
        options["stage1_weights"] = tuple(stage1_weights)
    report = family.evaluate(model, data_dir, config, split, modes=modes, rerank_k=rerank_k,
                             log=log, **options)
    report["captions_cut"] = cut
    name = experiment or experiments.load_name(model_dir)
    return eval_report.write(report, model, config, path, data_dir, split, output_json,
                             figures=figures,
                             experiment=experiments.get(name) if name else None,
                             extras=family.report_extras)


def export(model_dir: str, output_dir: str, checkpoint: str = "best",
           loaded: Optional[tuple] = None) -> str:
    """Writes ``model_dir``'s model as a SavedModel, atomically; returns its path.
    ``loaded``: as ``evaluate``'s."""
    family = of_model_dir(model_dir)
    model, config, path = loaded or load(model_dir, checkpoint)
    module, signatures = family.servable(model)
    return savedmodel.save_servable(module, signatures, output_dir, config, path)
