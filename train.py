"""Trains HGAN (or IATV with --model=iatv) on TFRecords written by `python -m data_prep`.

  python train.py --config=demo --data_dir=TFRECORDS_DIR --model_dir=DIR \
      [--model=hgan|iatv] [--set=field=value ...] [--max_steps=N] [--bert=PATH_OR_HANDLE]
  python train.py --experiment=hgan/table3/+word --config=demo ...   # a paper row by name

An experiment (``hgan/experiments.py``) sets the family and its row's overrides on top of
the preset; --set items come after it. Its name is recorded in DIR, so eval.py prints the
paper's figures beside the measured ones.

The resolved config is saved as DIR/config.json; re-running with the same DIR resumes from
the latest checkpoint. The best checkpoint on the val split goes to DIR/best/.
"""
from absl import app, flags, logging

from hgan import experiments, families
from hgan.config import PRESETS, resolve
from hgan.data import pipeline
from hgan.training import run_dir

FLAGS = flags.FLAGS
flags.DEFINE_enum("config", "paper", sorted(PRESETS), "Preset to start from.")
flags.DEFINE_enum("model", None, sorted(families.FAMILIES),
                  "Model family (overrides config.family).")
flags.DEFINE_string("data_dir", None, "Output dir of data_prep (shards + manifest.json).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, config.json and logs go.")
flags.DEFINE_multi_string("set", [], "Config override field=value (repeatable).")
flags.DEFINE_string("bert", None, "BERT handle or SavedModel dir (overrides the preset).")
flags.DEFINE_integer("max_steps", None, "Stop after this many steps (overrides epochs).")
flags.DEFINE_string("val_split", "val", "Split for model selection; never the test split.")
flags.DEFINE_string("experiment", None, "A paper row of hgan/experiments.py, e.g. "
                    "hgan/table3/+word or iatv/table2/triplet (sets family and overrides).")
flags.mark_flags_as_required(["data_dir", "model_dir"])


def main(argv):
    del argv
    overrides = list(FLAGS.set)
    experiment = experiments.get(FLAGS.experiment) if FLAGS.experiment else None
    if experiment is not None:
        if FLAGS.model is not None and FLAGS.model != experiment.family:
            raise app.UsageError(f"--experiment={experiment.name} is a {experiment.family} "
                                 f"row; drop --model={FLAGS.model}")
        dataset = pipeline.load_manifest(FLAGS.data_dir).get("dataset")
        if dataset != experiment.dataset:
            logging.warning("experiment %s was reported on %s; %s is %s: its paper figures "
                            "are a reference, not a target", experiment.name,
                            experiment.dataset, FLAGS.data_dir, dataset)
    if FLAGS.bert:
        overrides.append(f"bert={FLAGS.bert}")
    if FLAGS.max_steps is not None:
        overrides.append(f"max_steps={FLAGS.max_steps}")
    if FLAGS.model is not None:
        overrides.append(f"model={FLAGS.model}")
    config = (experiments.config(experiment.name, FLAGS.config, overrides) if experiment
              else resolve(FLAGS.config, overrides))
    config = run_dir.resolve_vocab(config, FLAGS.data_dir, FLAGS.model_dir)
    config = run_dir.reconcile_config(config, FLAGS.model_dir)
    if experiment is not None:
        experiments.save_name(FLAGS.model_dir, experiment.name)
    summary = families.train(config, FLAGS.data_dir, FLAGS.model_dir, val_split=FLAGS.val_split)
    logging.info("done: %s", summary)
    print(f"trained to step {summary['step']}; checkpoints in {FLAGS.model_dir}")


if __name__ == "__main__":
    app.run(main)
