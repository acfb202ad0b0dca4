"""The README's workflow through the installed console scripts, at a tiny size: hgan-demo-data,
hgan-prep, hgan-train (killed and resumed), hgan-eval, hgan-export, hgan-search index and
query (run from another directory, as a user runs them). hgan-train runs as a process of
its own, so that it can be killed; the other commands run their entry points in the test's
process (``tests_support.run_command``)."""
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest

from hgan.config import Config
from hgan.evaluation import hgan_scoring
from hgan.modeling.hgan.model import load_model
from tests_support import ROOT, console_script, make_reed, run_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory, tiny_vocab):
    root = tmp_path_factory.mktemp("cli")
    raw, out = str(root / "raw"), str(root / "tfr")
    run_command("hgan-demo-data", f"--output_dir={raw}", "--identities=10", "--shots=2")
    run_command("hgan-prep", "check", "--dataset=demo", f"--data_dir={raw}")
    run_command("hgan-prep", "--dataset=demo", f"--data_dir={raw}", f"--output_dir={out}",
                "--strict", f"--vocab_file={tiny_vocab}")
    return out


def _train_args(tfr, model_dir, vocab, steps):
    return ["hgan-train", "--config=tiny", f"--data_dir={tfr}", f"--model_dir={model_dir}",
            "--set=bert=scratch:2x16", "--set=bert_layers=last", f"--set=vocab_file={vocab}",
            "--set=batch_size=4", "--set=identities_per_batch=2", "--set=checkpoint_every=2",
            f"--max_steps={steps}", "--val_split=none"]  # model selection: test_train's


def test_train_sigkill_resume_then_eval_and_export(tfrecords, tiny_vocab, tmp_path, capfd):
    """hgan-train killed mid-run (SIGKILL) resumes from its last checkpoint; hgan-eval,
    hgan-export and hgan-search then read the run (one training run for the README's
    commands)."""
    model_dir = str(tmp_path / "run")
    ckpt_dir = os.path.join(model_dir, "ckpt")
    args = _train_args(tfrecords, model_dir, tiny_vocab, 400)
    proc = subprocess.Popen([console_script(args[0]), *args[1:]], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            steps = _checkpoint_steps(ckpt_dir)
            if steps and max(steps) >= 4:
                break
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = max(_checkpoint_steps(ckpt_dir))
    # The resumed run also evaluates and exports its best checkpoint, in its own process.
    train_json, train_saved = str(tmp_path / "train_test.json"), str(tmp_path / "train_saved")
    out = run_command(*_train_args(tfrecords, model_dir, tiny_vocab, last + 2),
                      f"--test_json={train_json}", f"--export_dir={train_saved}")
    assert f"trained to step {last + 2}" in out
    for part in ("training", "loading the best checkpoint", "evaluation on test", "export"):
        assert re.search(rf"^   \({part}: \d+\.\d s\)$", out, re.M), (part, out)
    assert f"/ckpt/ckpt-{last} at step {last}" in out  # "resumed from ..."
    # orbit's own lines (each step's whole metric dict) are in the INFO log, not the output.
    assert "train | step" not in out, out
    assert max(_checkpoint_steps(ckpt_dir)) == last + 2
    assert Config.load(model_dir).train.max_steps == last + 2  # the run's config follows
    metrics = str(tmp_path / "metrics.json")
    out = run_command("hgan-eval", f"--model_dir={model_dir}", f"--data_dir={tfrecords}",
                  "--split=test", f"--output_json={metrics}")
    report = json.load(open(metrics))
    exact = report["exact"]["t2i"]
    assert f"| exact | t2i | {exact['R1']:.2f} | {exact['R5']:.2f} |" in out
    assert report["config"]["model"]["bert"] == "scratch:2x16"
    in_training = json.load(open(train_json))
    for mode in ("exact", "two_stage"):  # the same figures to the last digit
        assert in_training[mode]["t2i"] == report[mode]["t2i"], mode
        assert in_training[mode]["i2t"] == report[mode]["i2t"], mode
    saved = str(tmp_path / "saved")
    out = run_command("hgan-export", f"--model_dir={model_dir}", f"--output_dir={saved}")
    assert os.path.exists(os.path.join(saved, "saved_model.pb"))
    _assert_same_variables(saved, train_saved)
    # The finished run asked again trains no step and evaluates the same checkpoint.
    again = str(tmp_path / "again.json")
    out = run_command(*_train_args(tfrecords, model_dir, tiny_vocab, last + 2),
                      f"--test_json={again}")
    assert f"already trained to step {last + 2} of {last + 2}" in out, out
    assert max(_checkpoint_steps(ckpt_dir)) == last + 2
    again = json.load(open(again))
    for mode in ("exact", "two_stage"):
        assert (again[mode]["t2i"], again[mode]["i2t"]) == (report[mode]["t2i"],
                                                            report[mode]["i2t"]), mode
    # TensorFlow's Python INFO records (the saver's, the signature serialiser's) stay out of
    # the commands' output unless --verbosity asks for them.
    err = capfd.readouterr().err
    assert not re.findall(r"^I\d{4} .*\.py:\d+\] .*", err, re.M), err[-2000:]
    # The README's search commands, from another directory, on a folder of the test images.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    gallery = str(tmp_path / "gallery")
    run_command("hgan-search", "index", f"--savedmodel={saved}", f"--data_dir={tfrecords}",
            "--split=test", f"--index={gallery}", cwd=str(elsewhere))
    out = run_command("hgan-search", "query", f"--savedmodel={saved}", f"--index={gallery}",
                  "--top_k=3", "--json", "a woman in a red coat", cwd=str(elsewhere))
    results = json.loads(out)["results"]
    from hgan.serving.gallery import Gallery
    test_images = set(Gallery.open(gallery).paths())
    assert len(test_images) == 4  # the 2 test identities × 2 shots of the 10-identity set
    assert len(results) == 3 and {r["path"] for r in results} <= test_images


def _assert_same_variables(saved_a, saved_b):
    """The two SavedModels hold the same variables by object path (the object graph itself
    differs in Keras's layer names, numbered by what a process built before)."""
    import tensorflow as tf
    a, b = (tf.train.load_checkpoint(os.path.join(s, "variables", "variables"))
            for s in (saved_a, saved_b))
    names = set(a.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert names == set(b.get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert len(names) > 10, names
    for name in names:
        np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name), err_msg=name)


def _checkpoint_steps(ckpt_dir):
    if not os.path.isdir(ckpt_dir):
        return []
    return [int(f.split("-")[1].split(".")[0]) for f in os.listdir(ckpt_dir)
            if f.startswith("ckpt-") and f.endswith(".index")]


def test_cub_layout_end_to_end_reports_the_class_level_metrics(tiny_vocab, tmp_path):
    """CUB (Reed et al.'s layout) → TFRecords → train → hgan-eval: besides the instance
    metrics, text-to-image AP@50 and the class-fused image-to-text Rank-1 of both papers."""
    # Class names of vocab words and a colour per class, so the two test classes' fused
    # scores differ (with one image colour and [UNK] names every score tied, and argmax's
    # tie rule alone made the class Rank-1 50%).
    words = ["red", "blue", "green", "black", "white", "yellow", "shirt", "jacket"]
    classes = {f"{i:03d}.{w.title()}_Bird": 3 for i, w in enumerate(words, 1)}
    names = list(classes)
    make_reed(tmp_path / "cub", classes, split_files={
        "trainvalclasses.txt": names[:6], "valclasses.txt": names[4:6],
        "testclasses.txt": names[6:]},
        colours={name: (30 * i, 220 - 25 * i, 60 + 15 * i) for i, name in enumerate(names)})
    tfr, model_dir = str(tmp_path / "tfr"), str(tmp_path / "run")
    run_command("hgan-prep", "--dataset=cub", f"--data_dir={tmp_path / 'cub'}",
                f"--output_dir={tfr}", "--strict", f"--vocab_file={tiny_vocab}")
    run_command(*_train_args(tfr, model_dir, tiny_vocab, 2))
    report_path = str(tmp_path / "report.json")
    run_command("hgan-eval", f"--model_dir={model_dir}", f"--data_dir={tfr}", "--split=test",
            f"--output_json={report_path}", "--modes=exact")
    report = json.load(open(report_path))
    assert report["queries"] == 2 * 3 * 2 and report["gallery"] == 2 * 3  # 2 captions each
    # class_R1 fuses each class's 6 sentences into one score per image and class (their
    # mean) and counts the images whose own class wins: recomputed here by hand from the
    # exact scores of the checkpoint eval.py used (test_metrics pins the fusion itself on
    # scores where other readings differ; an untrained model's need not).
    model, config, _ = load_model(model_dir, report["checkpoint"])
    texts, images = hgan_scoring.encode_split(model, tfr, config, "test")
    scores = hgan_scoring.Scorer(model).exact(texts, images)["total"]  # [12 sentences, 6 images]
    assert sorted(set(texts["label"])) == [0, 1] and len(images["label"]) == 6
    fused = np.stack([scores[texts["label"] == c].mean(axis=0) for c in (0, 1)], axis=1)
    rows = np.arange(6)
    margin = fused[rows, images["label"]] - fused[rows, 1 - images["label"]]
    assert (np.abs(margin) > 1e-5).all(), margin  # no near-tie: the count below is decisive
    assert report["i2t"]["class_R1"] == pytest.approx(100 * np.mean(margin > 0))
    # A top 50 of a 6-image gallery holds all 6, 3 of them of the query's class: 50 % for
    # every query and class, whatever the ranking (the ranking is pinned in test_metrics).
    assert report["t2i"]["AP@50"] == report["t2i"]["class_AP@50"] == 50.0


def test_a_paper_run_on_fallback_tagged_phrases_stops_before_training(tfrecords, tmp_path):
    manifest = json.load(open(os.path.join(tfrecords, "manifest.json")))
    if manifest["phrase_tagger"] != "fallback":
        pytest.skip("NLTK's perceptron data is installed here: the import used it")
    model_dir = tmp_path / "run"
    proc = subprocess.run([console_script("hgan-train"), "--config=paper",
                           f"--data_dir={tfrecords}", f"--model_dir={model_dir}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--allow_fallback_tagger" in proc.stderr, proc.stderr[-2000:]
    assert "nltk.downloader averaged_perceptron_tagger_eng" in proc.stderr
    assert not model_dir.exists()  # refused before anything was written


def test_what_training_would_evaluate_and_export_into_is_checked_before_training(
        tfrecords, tiny_vocab, tmp_path, monkeypatch, capfd):
    """--test_json / --export_dir fail before training, not after it: a split the data
    lacks, an export folder that is not a SavedModel, or several workers (TF_CONFIG)."""
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    model_dir = tmp_path / "run"
    args = _train_args(tfrecords, str(model_dir), tiny_vocab, 2)
    test_json = f"--test_json={tmp_path / 't.json'}"
    cases = [([test_json, "--test_split=holdout"], None, "--test_split=holdout: "),
             ([f"--export_dir={foreign}"], None, "is not a SavedModel"),
             ([test_json], "{}", "with several workers \\(TF_CONFIG\\)")]
    for extra, tf_config, message in cases:
        with monkeypatch.context() as env:
            if tf_config is not None:
                env.setenv("TF_CONFIG", tf_config)
            capfd.readouterr()
            with pytest.raises(AssertionError, match="exited 1"):
                run_command(*args, *extra)
        assert re.search(message, capfd.readouterr().err), extra
        assert not model_dir.exists(), extra  # refused before anything was written
    assert (foreign / "todo.txt").read_text() == "mine"
