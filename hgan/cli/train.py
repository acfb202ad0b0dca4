"""hgan-train: trains HGAN (or IATV with --family=iatv) on TFRecords written by hgan-prep.

  hgan-train --config=demo --data_dir=TFRECORDS_DIR --model_dir=DIR \
      [--family=hgan|iatv] [--set=section.field=value ...] [--max_steps=N] [--bert=PATH]
  hgan-train --experiment=hgan/table3/+word --config=demo ...   # a paper row by name

An experiment (``hgan.config.experiments``) sets the family and its row's overrides on top
of the preset; --set items come after it. Its name is recorded in DIR, so hgan-eval prints
the paper's figures beside the measured ones.

The resolved config is saved as DIR/config.json; re-running with the same DIR resumes from
the latest checkpoint. The best checkpoint on the val split goes to DIR/best/.

  hgan-train ... --test_json=DIR/test.json --export_dir=DIR/savedmodel

then evaluates the best checkpoint on the test split as hgan-eval does (the same report
and files) and exports it as hgan-export does, in the same process (one start-up instead
of three, one model load instead of two), each part timed. Not with several workers
(TF_CONFIG): run hgan-eval and hgan-export after such a run.
"""
import os
import time

from absl import app, flags, logging

from hgan.cli import print_report, report_time, start, timed

FLAGS = flags.FLAGS


def define_flags():
    from hgan.config import FAMILY_NAMES, PRESET_NAMES
    flags.DEFINE_enum("config", "paper", PRESET_NAMES, "Preset to start from.")
    flags.DEFINE_enum("family", None, FAMILY_NAMES,
                      "Model family (default: the experiment's, else hgan).")
    flags.DEFINE_string("data_dir", None, "Output dir of hgan-prep (shards + manifest.json).")
    flags.DEFINE_string("model_dir", None, "Where checkpoints, config.json and logs go.")
    flags.DEFINE_multi_string("set", [], "Config override section.field=value (repeatable).")
    flags.DEFINE_string("bert", None, "BERT handle or SavedModel dir (overrides the preset).")
    flags.DEFINE_integer("max_steps", None, "Stop after this many steps (overrides epochs).")
    flags.DEFINE_string("val_split", "val", "Split for model selection; never the test split.")
    flags.DEFINE_string("experiment", None, "A paper row of hgan.config.experiments, e.g. "
                        "hgan/table3/+word or iatv/table2/triplet (sets family and overrides).")
    flags.DEFINE_bool("allow_fallback_tagger", False, "Let a --config=paper run train on noun "
                      "phrases from hgan-prep's fallback lexicon tagger (refused otherwise).")
    flags.DEFINE_string("test_json", None, "After training: the best checkpoint's report on "
                        "--test_split written here, as hgan-eval --output_json writes it.")
    flags.DEFINE_string("test_split", "test", "The split --test_json evaluates.")
    flags.DEFINE_string("export_dir", None, "After training: the best checkpoint exported "
                        "here, as hgan-export --output_dir writes it.")
    flags.mark_flags_as_required(["data_dir", "model_dir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    t0 = time.monotonic()
    from hgan import families
    from hgan.config import experiments, resolve
    from hgan.data import pipeline
    from hgan.training import run_dir

    overrides = list(FLAGS.set)
    experiment = experiments.get(FLAGS.experiment) if FLAGS.experiment else None
    manifest = pipeline.load_manifest(FLAGS.data_dir)
    _check_after_training(manifest)
    try:
        run_dir.check_phrase_tagger(manifest, FLAGS.data_dir, paper=FLAGS.config == "paper",
                                    allow_fallback=FLAGS.allow_fallback_tagger)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if experiment is not None:
        if FLAGS.family is not None and FLAGS.family != experiment.family:
            raise app.UsageError(f"--experiment={experiment.name} is a {experiment.family} "
                                 f"row; drop --family={FLAGS.family}")
        dataset = manifest.get("dataset")
        if dataset != experiment.dataset:
            logging.warning("experiment %s was reported on %s; %s is %s: its paper figures "
                            "are a reference, not a target", experiment.name,
                            experiment.dataset, FLAGS.data_dir, dataset)
    if FLAGS.bert:
        overrides.append(f"model.bert={FLAGS.bert}")
    if FLAGS.max_steps is not None:
        overrides.append(f"train.max_steps={FLAGS.max_steps}")
    if experiment is not None:
        config = experiments.config(experiment.name, FLAGS.config, overrides)
    else:
        config = resolve(FLAGS.config, overrides, family=FLAGS.family or "hgan")
    config = run_dir.resolve_vocab(config, FLAGS.data_dir, FLAGS.model_dir)
    config = run_dir.reconcile_config(config, FLAGS.model_dir)
    if experiment is not None:
        experiments.save_name(FLAGS.model_dir, experiment.name)
    summary = families.train(config, FLAGS.data_dir, FLAGS.model_dir, val_split=FLAGS.val_split)
    print(f"trained to step {summary['step']}; checkpoints in {FLAGS.model_dir}")
    report_time("training", t0)
    if not (FLAGS.test_json or FLAGS.export_dir):
        return
    with timed("loading the best checkpoint"):
        loaded = families.load(FLAGS.model_dir, "best")
    if FLAGS.test_json:
        with timed(f"evaluation on {FLAGS.test_split}"):
            report = families.evaluate(FLAGS.model_dir, FLAGS.data_dir, FLAGS.test_split,
                                       FLAGS.test_json, loaded=loaded)
            print_report(report, FLAGS.test_json)
    if FLAGS.export_dir:
        with timed("export"):
            print(f"SavedModel written to "
                  f"{families.export(FLAGS.model_dir, FLAGS.export_dir, loaded=loaded)}")


def _check_after_training(manifest: dict) -> None:
    """What --test_json / --export_dir need, checked before training rather than after."""
    if not (FLAGS.test_json or FLAGS.export_dir):
        return
    if os.environ.get("TF_CONFIG"):
        # The other workers would leave while the chief evaluates and exports.
        raise app.UsageError("--test_json / --export_dir run after training in one process; "
                             "with several workers (TF_CONFIG) run hgan-eval and hgan-export "
                             "after the run")
    if FLAGS.test_json and FLAGS.test_split not in manifest.get("splits", {}):
        raise app.UsageError(f"--test_split={FLAGS.test_split}: {FLAGS.data_dir} has the "
                             f"splits {sorted(manifest.get('splits', {}))}")
    if FLAGS.export_dir:
        from hgan.serving import savedmodel
        try:
            savedmodel.check_output_dir(FLAGS.export_dir)
        except FileExistsError as e:
            raise app.UsageError(f"--export_dir: {e}") from None


def run():
    define_flags()
    start(main, __doc__)


if __name__ == "__main__":
    run()
