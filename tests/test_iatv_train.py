"""IATV end to end at a tiny size: the three training phases, resume, eval report, export."""
import dataclasses
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from hgan import families
from hgan.config import Config
from hgan.data import pipeline
from hgan.evaluation import iatv_scoring
from hgan.families import export
from hgan.modeling.iatv.model import load_model
from hgan.serving import iatv_module
from hgan.serving import searcher as search
from hgan.tf_compat import tf
from hgan.training import iatv_pairs, loop, run_dir
from hgan.training.iatv_task import IATVTask

from conftest import IATV_STEPS, iatv_config
from tests_support import run_command

# Each test trains or loads a tiny model (the fast tier, -m "not slow", skips them).
pytestmark = pytest.mark.slow

STAGE1, TEXT, JOINT = IATV_STEPS


@pytest.fixture(scope="module")
def config(tiny_vocab):
    return iatv_config(tiny_vocab)


@pytest.fixture(scope="module")
def trained(iatv_run):
    """conftest's ``iatv_run``: stopped in the text phase (step 3), resumed to step 6."""
    return iatv_run


def test_phases_resume_and_model_selection(trained):
    model_dir, first, second, lines = trained
    assert (first["step"], first["phase"]) == (3, "stage2_text")
    assert (second["step"], second["phase"]) == (6, "stage2_joint")
    assert second["checkpoint"].endswith("ckpt-6")
    progress = [ln for ln in lines if ln.startswith("step ")]
    assert [ln.split()[1] for ln in progress] == ["1/3", "2/3", "3/3", "4/6", "5/6", "6/6"]
    assert all("steps/s" in ln and "ETA" in ln for ln in progress)
    assert [ln.split()[2] for ln in progress] == ["stage1"] * 2 + ["stage2_text"] * 2 + \
        ["stage2_joint"] * 2
    assert "cmce=" in progress[0] and "bce=" in progress[-1]
    # Buffers are filled once; stage 2 is initialised once (the resume at 3 restores it) but
    # pairs are mined by both runs.
    assert sum("identity buffers" in ln for ln in lines) == 1
    assert sum("initialised from stage 1" in ln for ln in lines) == 1
    assert sum("pairs mined" in ln for ln in lines) == 2
    best = json.load(open(os.path.join(model_dir, "best.json")))
    assert best["split"] == "val" and best["selected_by"] == "two_stage_R1"
    val = {int(ln.split()[2].rstrip(":")): float(re.search(r"two_stage_R1=([\d.]+)", ln)[1])
           for ln in lines if ln.startswith("val step")}
    assert list(val) == [4, 6]
    # The best checkpoint is the val pass with the highest two-stage R1 (the first of ties).
    assert best["step"] == max(val, key=lambda s: (val[s], -s))
    assert best["metrics"]["R1"] == pytest.approx(val[best["step"]], abs=0.005)
    assert Config.load(model_dir).train.max_steps == 0
    # The identity buffers are checkpointed, one row per training identity.
    shapes = tf.train.load_checkpoint(second["checkpoint"]).get_variable_to_shape_map()
    buffers = [s for name, s in shapes.items() if name.startswith("buffers/")]
    assert sorted(map(tuple, buffers)) == [(6, 16), (6, 16)]


def _weights(model):
    """(stage-1 CNN, stage-2 CNN, stage-1 word embedding, matcher word embedding)."""
    return ([w for layer in model.stage2_cnn.layers if layer.weights
             for w in model.stage1.image_tower.get_layer(layer.name).get_weights()],
            model.stage2_cnn.get_weights(),
            model.stage1.text_tower.get_layer("word_embedding").get_weights()[0],
            model.matcher.get_layer("word_embedding").get_weights()[0])


def test_stage2_starts_from_stage1_with_the_cnn_fixed_then_fine_tuned(trained):
    model_dir = trained[0]
    model = load_model(model_dir, "latest")[0]

    def at(step):
        path = os.path.join(model_dir, "ckpt", f"ckpt-{step}")
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        return _weights(model)

    s1_cnn_2, _, s1_words_2, _ = at(2)
    s1_cnn, s2_cnn, s1_words, s2_words = at(4)
    # Stage 1 no longer moves after its phase.
    for a, b in zip(s1_cnn_2 + [s1_words_2], s1_cnn + [s1_words]):
        np.testing.assert_array_equal(a, b)
    # After the text phase: the CNN is still stage 1's copy, the language side has moved.
    for a, b in zip(s1_cnn, s2_cnn):
        np.testing.assert_array_equal(a, b)
    assert np.abs(s2_words - s1_words).max() > 0
    # After the joint phase the CNN has been fine-tuned too.
    s1_cnn_6, s2_cnn_6, _, _ = at(6)
    assert max(np.abs(a - b).max() for a, b in zip(s1_cnn_6, s2_cnn_6)) > 0


def test_eval_report_has_both_stages(trained, tiny_data, tmp_path):
    """hgan-eval on an IATV run: stage 1 and two-stage figures; the report's top level is
    its two-stage ranking, as the printed table shows it."""
    model_dir = trained[0]
    out = str(tmp_path / "metrics.json")
    printed = run_command("hgan-eval", f"--model_dir={model_dir}", f"--data_dir={tiny_data}",
                          "--split=test", f"--output_json={out}")
    saved = json.load(open(out))
    assert "exact" not in saved
    for mode in ("stage1", "two_stage"):
        for direction in ("t2i", "i2t"):
            assert set(saved[mode][direction]) >= {"R1", "R5", "R10", "mAP", "mINP"}
        assert f"{mode}_s" in saved["timing"]
    for direction in ("t2i", "i2t"):
        assert saved[direction] == saved["two_stage"][direction]
        assert f"| two_stage | {direction} | {saved[direction]['R1']:.2f} |" in printed
    assert saved["queries"] == 12 and saved["gallery"] == 6 and saved["candidates"] == 3
    assert saved["config"]["family"] == "iatv"
    table = open(str(tmp_path / "metrics.md")).read()
    assert "| stage1 | t2i |" in table and "| two_stage | i2t |" in table
    assert os.path.exists(str(tmp_path / "metrics_top10.png"))


def test_class_level_rows_compare_the_class_queries_ap50(trained, tiny_data, tmp_path):
    """On CUB / Flowers (here the tiny split relabelled as CUB: 3 classes of 4 sentences)
    both modes report AP@50 of class queries, the papers' figure, beside the per-sentence
    one; the CUB stage-2 row compares the class queries' figure and labels the other."""
    import shutil
    from hgan.evaluation import metrics
    data = str(tmp_path / "cub_like")
    shutil.copytree(tiny_data, data)
    manifest = json.load(open(os.path.join(data, "manifest.json")))
    with open(os.path.join(data, "manifest.json"), "w") as f:
        json.dump({**manifest, "dataset": "cub"}, f)
    out = str(tmp_path / "metrics.json")
    families.evaluate(trained[0], data, "test", out, figures=False,
                      experiment="iatv/table3/stage2")
    saved = json.load(open(out))
    assert saved["candidates"] == 50  # AP@50 re-ranks at least 50 (here every image)
    for mode in ("stage1", "two_stage"):
        assert {"AP@50", "class_AP@50"} <= set(saved[mode]["t2i"]), mode
    model, config, _ = load_model(trained[0])
    texts, images = iatv_scoring.encode_split(model, data, config, "test")
    classes, ranked = iatv_scoring.class_two_stage_scores(model, texts, images, 50)
    assert saved["two_stage"]["t2i"]["class_AP@50"] == pytest.approx(
        metrics.class_query_ap_at_k(ranked, classes, images["label"]), abs=1e-6)
    [cell] = saved["experiment"]["comparison"]
    assert (cell["metric"], cell["paper"]) == ("class_AP@50", 57.6)
    assert cell["measured"] == saved["two_stage"]["t2i"]["class_AP@50"]
    per_sentence = saved["two_stage"]["t2i"]["AP@50"]
    assert f"one query per sentence, not the paper's figure: {per_sentence:.2f}" in \
        saved["markdown"]
    assert f"per sentence = {per_sentence:.2f}" in saved["markdown"]


def test_two_stage_reorders_stage1_top_k_by_stage2_logits(trained, tiny_data):
    model, config, _ = load_model(trained[0])
    texts, images = iatv_scoring.encode_split(model, tiny_data, config, "test")
    stage1 = iatv_scoring.stage1_scores(texts, images)
    k = 3
    t2i, _ = iatv_scoring.two_stage_scores(model, texts, images, k, stage1)
    n_texts, n_images = stage1.shape
    # Every pair's stage-2 logit, computed directly.
    rows, cols = np.repeat(np.arange(n_texts), n_images), np.tile(np.arange(n_images), n_texts)
    logits = model.pair_logits(images["regions"][cols],
                               {"input_word_ids": texts["input_word_ids"][rows],
                                "input_mask": texts["input_mask"][rows]}).numpy()
    logits = logits.reshape(n_texts, n_images)
    for q in range(n_texts):
        top = np.argsort(-stage1[q], kind="stable")[:k]
        order = np.argsort(-t2i[q], kind="stable")
        assert set(order[:k]) == set(top)
        np.testing.assert_array_equal(order[:k], top[np.argsort(-logits[q, top], kind="stable")])
        np.testing.assert_array_equal(order[k:], np.argsort(-stage1[q], kind="stable")[k:])

    # With a stage-1 weight w the head is ordered by logit + w·cos/τ, by a hand loop here.
    weighted = dataclasses.replace(config.model, stage1_weight=0.5, cmce_temperature=0.04)
    model.config = dataclasses.replace(config, model=weighted)
    t2i_w, i2t_w = iatv_scoring.two_stage_scores(model, texts, images, k, stage1)
    changed = 0
    for q in range(n_texts):
        top = np.argsort(-stage1[q], kind="stable")[:k]
        fused = [logits[q, g] + 0.5 * stage1[q, g] / 0.04 for g in top]
        order = np.argsort(-t2i_w[q], kind="stable")
        np.testing.assert_array_equal(order[:k], top[np.argsort(-np.array(fused), kind="stable")])
        changed += not np.array_equal(order, np.argsort(-t2i[q], kind="stable"))
    for g in range(n_images):  # image-to-text: the same sum over the image's top k texts
        top = np.argsort(-stage1[:, g], kind="stable")[:k]
        fused = logits[top, g] + 0.5 * stage1[top, g] / 0.04
        np.testing.assert_array_equal(np.argsort(-i2t_w[g], kind="stable")[:k],
                                      top[np.argsort(-fused, kind="stable")])
    assert changed  # the weight did re-order some query (else the case would test nothing)
    # full_gallery ("w/o stage-1") is stage 2 alone whatever the weight.
    full, _ = iatv_scoring.two_stage_scores(model, texts, images, n_images, stage1, fuse=False)
    for q in range(n_texts):
        np.testing.assert_array_equal(np.argsort(-full[q], kind="stable"),
                                      np.argsort(-logits[q], kind="stable"))


def test_the_fusion_sweep_at_the_configs_weight_is_evals_two_stage(trained, tiny_data):
    # hgan-eval --stage1_weights re-ranks from logits it caches once; at the config's weight
    # (0 in this preset) it must give the two-stage R1 of the same report, both ways.
    model, config, _ = load_model(trained[0])
    report = iatv_scoring.evaluate(model, tiny_data, config, "test", stage1_weights=(0, 1))
    sweep = report["stage1_weight_sweep"]
    assert sweep["w=0"] == pytest.approx((report["two_stage"]["t2i"]["R1"],
                                          report["two_stage"]["i2t"]["R1"]))
    assert sweep["stage1"] == pytest.approx((report["stage1"]["t2i"]["R1"],
                                             report["stage1"]["i2t"]["R1"]))


def _png(colour):
    buf = io.BytesIO()
    Image.new("RGB", (16, 32), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_export_serves_stage1_scores_and_stage2_confidences(trained, tmp_path, monkeypatch):
    model_dir = trained[0]
    saved = export(model_dir, str(tmp_path / "saved"))
    served = tf.saved_model.load(saved)
    # The serving contract (encode_text, encode_image, rerank, score) and IATV's own two.
    assert set(served.signatures) == {"encode_text", "encode_image", "rerank", "score",
                                      "rerank_score", "rerank_confidence"}
    # One output per signature: a client taking "the" output gets what the name says.
    assert all(len(f.structured_outputs) == 1 for name, f in served.signatures.items()
               if name not in ("encode_text", "encode_image"))
    texts = ["a man in a red shirt with a bag.", "a man wearing blue coat and pants.", ""]
    images = [_png((200, 30, 30)), _png((20, 40, 220))]
    score = served.signatures["score"](texts=tf.constant(texts), images=tf.constant(images))
    rerank = served.signatures["rerank_score"](texts=tf.constant(texts),
                                               images=tf.constant(images))
    confidence = served.signatures["rerank_confidence"](texts=tf.constant(texts),
                                                        images=tf.constant(images))
    model, config, _ = load_model(model_dir)
    tokens = pipeline.make_tokenizer(config)(tf.constant(texts))
    pixels = tf.stack([pipeline.preprocess_image(pipeline.decode_image(b), config) for b in images])
    text, image = model.encode_text(tokens).numpy(), model.encode_image(pixels).numpy()
    np.testing.assert_allclose(score["score"].numpy(), text @ image.T, atol=1e-5)
    regions = model.encode_regions(pixels).numpy()
    rows, cols = np.repeat(np.arange(3), 2), np.tile(np.arange(2), 3)
    logits = model.pair_logits(regions[cols], {k: tokens[k].numpy()[rows]
                                               for k in ("input_word_ids", "input_mask")})
    np.testing.assert_allclose(rerank["score"].numpy(), logits.numpy().reshape(3, 2),
                               atol=1e-5)
    np.testing.assert_allclose(confidence["confidence"].numpy(),
                               tf.sigmoid(logits).numpy().reshape(3, 2), atol=1e-5)
    # The two-stage score from encode_image outputs: the logit alone at weight 0 (this
    # preset), logit + w·cos/τ once the config sets a weight.
    encoded = served.signatures["encode_image"](images=tf.constant(images))
    features = {"texts": tf.constant(texts), "image_global": encoded["global"],
                "image_regions": encoded["regions"]}
    np.testing.assert_allclose(served.signatures["rerank"](**features)["score"],
                               logits.numpy().reshape(3, 2), atol=1e-5)
    weighted = dataclasses.replace(config.model, stage1_weight=0.5)
    model.config = dataclasses.replace(config, model=weighted)
    serving = iatv_module.IATVServing(model)  # held: its tf.functions keep a weak self
    fused = serving.rerank(**features)["score"].numpy()
    cosine = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (
        image / np.linalg.norm(image, axis=1, keepdims=True)).T
    np.testing.assert_allclose(
        fused, logits.numpy().reshape(3, 2) + 0.5 / config.model.cmce_temperature * cosine,
        atol=1e-4)
    model.config = config
    # Stage 1's text tower reads the request's longest sentence, not max_len slots (the
    # scores above are the full-length model's): traced, its token length is not static.
    lengths = []
    tower = model.stage1.text_tower
    call = tower.call
    monkeypatch.setattr(tower, "call", lambda inputs, *a, **k: (
        lengths.append(inputs["input_word_ids"].shape[1]), call(inputs, *a, **k))[1])
    held = iatv_module.IATVServing(model)  # its tf.functions keep a weak self
    held.encode_text.get_concrete_function()
    assert lengths and all(n is None for n in lengths), (lengths, config.data.max_len)
    enc = served.signatures["encode_image"](images=tf.constant(images[:1]))
    assert enc["global"].shape == (1, 16) and enc["regions"].shape == (1, 8, 64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not a JPEG or PNG"):
        served.signatures["encode_image"](images=tf.constant([b"not an image"]))
    # Search: an index of encode_image outputs; stage 1 ranks, stage 2 re-orders the top 2.
    folder = tmp_path / "gallery"
    folder.mkdir()
    colours = [(200, 30, 30), (20, 40, 220), (30, 200, 30)]
    for i, colour in enumerate(colours):
        (folder / f"{i}.png").write_bytes(_png(colour))
    index = str(tmp_path / "gallery")
    search.build_index(saved, index, images=str(folder), log=lambda _: None, dtype="float32")
    stage1 = search.query(saved, index, texts[0], top_k=3, rerank_k=0)
    both = search.query(saved, index, texts[0], top_k=3, rerank_k=2)
    pixels = tf.stack([pipeline.preprocess_image(pipeline.decode_image(_png(c)), config)
                       for c in colours])
    cosine = (text[:1] @ model.encode_image(pixels).numpy().T)[0]
    assert [r["path"] for r in stage1] == [f"{i}.png" for i in np.argsort(-cosine)]
    np.testing.assert_allclose([r["score"] for r in stage1], np.sort(cosine)[::-1], atol=1e-5)
    top2 = np.argsort(-cosine)[:2]
    logits = model.pair_logits(model.encode_regions(pixels).numpy()[top2],
                               {k: np.repeat(tokens[k].numpy()[:1], 2, axis=0)
                                for k in ("input_word_ids", "input_mask")}).numpy()
    assert [r["path"] for r in both[:2]] == [f"{i}.png" for i in top2[np.argsort(-logits)]]
    np.testing.assert_allclose(sorted(r["rerank"] for r in both[:2]), np.sort(logits),
                               atol=1e-5)
    assert both[2]["path"] == stage1[2]["path"] and "rerank" not in both[2]


def test_pair_batches_join_the_mined_indices_to_their_image_and_caption(tiny_data, config):
    encoded, captions = iatv_pairs.split_records(tiny_data, "train")
    assert len(encoded) == 12 and len(captions) == 24  # two captions per image
    text_index, image_index = np.array([0, 5, 7, 23]), np.array([3, 2, 11, 0])
    match = np.array([1, 0, 1, 0])
    cfg = config.replace(random_flip=False)
    tokenizer = pipeline.make_tokenizer(cfg)
    ds = iatv_pairs.pair_dataset(encoded, captions, text_index, image_index, match, cfg,
                                 tokenizer, seed=0)
    batch = {k: v.numpy() for k, v in next(iter(ds)).items()}
    # One batch of 4 is a permutation of the 4 pairs: find each row's pair by its caption's
    # tokens and its label (texts 5 and 7 share a caption), then check the image.
    want_tokens = tokenizer(tf.constant(list(captions[text_index])))["input_word_ids"].numpy()
    for row in range(4):
        pair = [j for j in range(4) if (want_tokens[j] == batch["input_word_ids"][row]).all()
                and match[j] == batch["match"][row]]
        assert len(pair) == 1
        image = pipeline.preprocess_image(pipeline.decode_image(encoded[image_index[pair[0]]]), cfg)
        np.testing.assert_allclose(batch["image"][row], image, atol=1e-6)


def test_w_o_stage1_selects_on_the_full_gallery_figure_it_reports(tiny_data, config,
                                                                  monkeypatch):
    """Table 2's "w/o stage-1" reports stage 2 scoring every pair (no stage-1 screening):
    its val passes compute that figure and select on it, not on the two-stage one."""
    asked = []

    def evaluate(model, data_dir, config, split, modes):
        asked.append(modes)
        return {m: {"t2i": {"R1": r1, "R5": 0.0, "R10": 0.0, "mAP": 0.0}}
                for m, r1 in zip(modes, (10.0, 20.0))}

    monkeypatch.setattr(iatv_scoring, "evaluate", evaluate)
    for stage1_init, mode in ((True, "two_stage"), (False, "full_gallery")):
        task = IATVTask(config.replace(stage1_init=stage1_init), tiny_data, val_split="val")
        assert task.selection("stage1") is None
        assert task.selection("stage2_text") == task.selection("stage2_joint") == f"{mode}_R1"
        metrics = task.validate("stage2_joint")
        assert asked[-1] == ("stage1", mode)
        assert metrics[f"{mode}_R1"] == 20.0
        assert task.best_metrics(metrics)["R1"] == 20.0 and metrics["stage1_R1"] == 10.0


def test_the_full_gallery_is_scored_without_the_two_stage_mode(trained, tiny_data):
    # What a "w/o stage-1" run validates with: stage 1 and stage 2 over every pair.
    model, config, _ = load_model(trained[0])
    report = iatv_scoring.evaluate(model, tiny_data, config, "val",
                                   modes=("stage1", "full_gallery"))
    assert "two_stage" not in report and report["t2i"] == report["full_gallery"]["t2i"]
    assert 0 <= report["full_gallery"]["t2i"]["R1"] <= 100


def test_table2_without_identities_gives_each_training_image_its_own(tiny_data, config,
                                                                     tmp_path):
    """"w/o ID": one identity per training image in the identity buffers, filled and
    checkpointed in stage 1. ("w/o stage-1" is the row test_experiments trains by name.)"""
    cfg = config.replace(identity_labels=False, stage1_steps=1, stage2_text_steps=0,
                         stage2_joint_steps=0, max_steps=1)
    model_dir = str(tmp_path / "run")
    lines = []
    run_dir.reconcile_config(cfg, model_dir)
    summary = families.train(cfg, tiny_data, model_dir, val_split="none", log=lines.append)
    assert summary["step"] == 1
    assert any("identity buffers: 12 identities from 12 images" in ln for ln in lines)
    shapes = tf.train.load_checkpoint(summary["checkpoint"]).get_variable_to_shape_map()
    assert sorted(s for n, s in shapes.items() if n.startswith("buffers/")) == [[12, 16]] * 2


def test_a_non_finite_step_is_skipped_and_stops_with_a_clear_error(tiny_data, config,
                                                                  tmp_path):
    """As HGAN's guard: the bad step (a NaN pixel: finite loss is not guaranteed to show it)
    changes no weight, optimizer slot or identity buffer, and the run stops naming the last
    good checkpoint."""
    cfg = config.replace(checkpoint_every=1, max_steps=STAGE1)
    model_dir = str(tmp_path / "run")
    run_dir.reconcile_config(cfg, model_dir)
    trainer = IATVTask(cfg, tiny_data)
    clean = trainer.batches
    state = {}

    def poisoned(phase, start, log):  # the second batch carries a NaN pixel
        batches = clean(phase, start, log)
        yield next(batches)
        # What the first step left (trainable weights, optimizer slots, buffers).
        state["before"] = [v.numpy().copy() for v in _trained_state(trainer)]
        bad = next(batches)
        yield {**bad, "image": bad["image"] * float("nan")}

    trainer.batches = poisoned
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step 2 "
                                                 r"\(stage1: .*\); that step was not applied"):
        loop.fit(trainer, model_dir, validate=False, log=lambda _: None)
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "ckpt")).endswith("ckpt-1")
    after = [v.numpy() for v in _trained_state(trainer)]
    assert len(after) == len(state["before"]) > 10
    for i, (a, b) in enumerate(zip(state["before"], after)):
        np.testing.assert_array_equal(a, b, err_msg=str(i))


def _trained_state(trainer):
    """Trainable weights, both stage-1 optimizers' slots (not their step counts) and the
    identity buffers."""
    slots = [v for name in ("text", "image")
             for v in trainer.stage1_optimizers[name].variables()[1:]]
    return (list(trainer.model.trainable_variables) + slots
            + [trainer.buffers.image, trainer.buffers.text])
