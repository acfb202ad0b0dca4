"""Why IATV's stage 2 does or does not learn: a toy problem with a known answer, and the
real stage-2 problem on a trained stage 1's cached features.

  # Toy: regions whose channel j is raised in a few places are identity j, the caption has
  # one word that names j; pairs of the same identity match. Known answer: separable.
  python scripts/iatv_stage2_probe.py toy [--steps=300 --positive_share=0.5 --spa=1 --sma=1
      --region_scale=1 --lr=1e-3]

  # Real: a train.py model_dir whose stage 1 is trained (stage 2 may be absent). Encodes the
  # train and val splits once (stage 1's CNN as stage 2's, frozen: the "text" phase of
  # §4.2), prints what the region features carry, then trains a fresh matcher (initialised
  # from stage 1) on the mined pairs and reports the val two-stage R1 as it goes.
  python scripts/iatv_stage2_probe.py real --model_dir=DIR --data_dir=TFRECORDS [--steps=300
      --lr=1e-3 --positive_share=0 --set=model.positive_share=0.5 ...]

  # Fusion: a trained model's two-stage R1 (both directions) on each split as stage 1's
  # weight in the two-stage score (model.stage1_weight: logit + w·cos/τ) sweeps; stage 2's
  # logits of each query's top k are computed once.
  python scripts/iatv_stage2_probe.py fusion --model_dir=DIR --data_dir=TFRECORDS
      [--checkpoint=best --splits=val,test --weights=0,0.1,0.25,0.5,1,2]

toy and real print the per-layer gradient norms of the matcher. ``toy_problem`` / ``train_toy``
are what tests/test_iatv_stage2.py's learning test runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hgan.tf_compat import keras, tf  # noqa: E402

# --------------------------------------------------------------------------- toy problem
TOY_VOCAB, TOY_T, TOY_L, TOY_C = 40, 8, 16, 8
CLS, SEP, NAME0, FILLER0 = 2, 3, 10, 20


def toy_problem(n: int, identities: int = 6, positive_share: float = 0.5,
                region_scale: float = 1.0, seed: int = 0, hard: bool = False) -> dict:
    """``n`` (caption, image) pairs of the toy problem → {"regions" [n, L, C],
    "input_word_ids" / "input_mask" [n, T], "match" [n], "text_id", "image_id"}.

    Image of identity j: ReLU noise (about the scale of a BatchNorm–ReLU map) with channel j
    raised by 3 in 4 random regions of 16; caption: [CLS], 3–5 filler words and the name
    word of j at a random place, [SEP]. A pair matches iff the identities are equal, so the
    answer needs an interaction of word and region (no single modality predicts it).

    ``hard``: the demo's situation in miniature. An identity is two attributes (a, b) of
    4 values each (16 identities): channel a raised in 2 of the top 8 regions, channel
    4 + b in 2 of the bottom 8, and the caption names both; every negative differs from
    its text in exactly one attribute, as stage 1's mined negatives share most of theirs.
    """
    rng = np.random.default_rng(seed)
    match = rng.random(n) < positive_share
    regions = np.maximum(rng.normal(0.0, 0.7, (n, TOY_L, TOY_C)), 0.0)
    ids = np.zeros((n, TOY_T), np.int32)
    if hard:
        ta, tb = rng.integers(0, 4, n), rng.integers(0, 4, n)
        flip_a = rng.random(n) < 0.5
        shift = rng.integers(1, 4, n)
        ia = np.where(~match & flip_a, (ta + shift) % 4, ta)
        ib = np.where(~match & ~flip_a, (tb + shift) % 4, tb)
        text_id, image_id = 4 * ta + tb, 4 * ia + ib
        for i in range(n):
            regions[i, rng.choice(TOY_L // 2, 2, replace=False), ia[i]] += 3.0
            regions[i, TOY_L // 2 + rng.choice(TOY_L // 2, 2, replace=False), 4 + ib[i]] += 3.0
            words = list(rng.integers(FILLER0, TOY_VOCAB, rng.integers(2, 5)))
            for name in rng.permutation([NAME0 + ta[i], NAME0 + 4 + tb[i]]):
                words.insert(rng.integers(0, len(words) + 1), name)
            ids[i, :len(words) + 2] = [CLS] + words + [SEP]
    else:
        text_id = rng.integers(0, identities, n)
        other = (text_id + rng.integers(1, identities, n)) % identities
        image_id = np.where(match, text_id, other)
        for i in range(n):
            regions[i, rng.choice(TOY_L, 4, replace=False), image_id[i]] += 3.0
            words = list(rng.integers(FILLER0, TOY_VOCAB, rng.integers(3, 6)))
            words.insert(rng.integers(0, len(words) + 1), NAME0 + text_id[i])
            ids[i, :len(words) + 2] = [CLS] + words + [SEP]
    return {"regions": (region_scale * regions).astype(np.float32), "input_word_ids": ids,
            "input_mask": (ids > 0).astype(np.int32), "match": match.astype(np.float32),
            "text_id": text_id, "image_id": image_id}


def auc(labels, scores) -> float:
    """Area under the ROC curve (ties count one half)."""
    labels, scores = np.asarray(labels) > 0.5, np.asarray(scores, np.float64)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    # average ranks of ties
    allv = np.concatenate([pos, neg])
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _toy_random_negatives(data: dict, rng, share: float) -> dict:
    """``data`` of the hard toy with ``share`` of its negatives' images swapped for the
    image of a random pair that differs in any attribute (an image of another negative,
    kept only when its identity differs from the text's)."""
    out = {k: v.copy() for k, v in data.items()}
    neg = np.flatnonzero(data["match"] < 0.5)
    swap = neg[rng.random(len(neg)) < share]
    donors = rng.choice(len(data["match"]), len(swap))
    ok = data["image_id"][donors] != data["text_id"][swap]
    swap, donors = swap[ok], donors[ok]
    out["regions"][swap] = data["regions"][donors]
    out["image_id"][swap] = data["image_id"][donors]
    return out


def grad_norms(matcher, grads) -> dict:
    """Gradient norm per top-level layer of the matcher (sublayers of the two attention
    layers listed separately)."""
    out = {}
    for v, g in zip(matcher.trainable_variables, grads):
        if g is None:
            continue
        parts = v.name.split("/")
        key = "/".join(parts[1:3]) if parts[1] in ("spatial_attention", "semantic_decoder") \
            else parts[1]
        g = tf.convert_to_tensor(g)
        out[key] = out.get(key, 0.0) + float(tf.reduce_sum(tf.square(g)))
    return {k: v ** 0.5 for k, v in out.items()}


def make_train_step(matcher, optimizer):
    from hgan.modeling.iatv import stage2

    @tf.function(reduce_retracing=True)
    def step(batch):
        with tf.GradientTape() as tape:
            logits = matcher(batch, training=True)["logits"]
            loss = stage2.matching_loss(batch["match"], logits)
        grads = tape.gradient(loss, matcher.trainable_variables)
        optimizer.apply_gradients(zip(grads, matcher.trainable_variables))
        return loss, logits, grads
    return step


def toy_matcher(spa: bool = True, sma: bool = True, units: int = 32, **overrides):
    from hgan.config import preset
    from hgan.modeling.iatv import stage2
    config = preset("tiny", "iatv").replace(
        max_len=TOY_T, word_dim=units, lstm_units=units, attention_dim=units,
        importance_hidden=units, fc_hidden=units, spatial_attention=spa,
        semantic_attention=sma, **overrides)
    return stage2.build_matcher(config, TOY_VOCAB, region_dim=TOY_C)


def train_toy(steps: int = 300, batch: int = 32, lr: float = 1e-3, positive_share=0.5,
              region_scale: float = 1.0, spa: bool = True, sma: bool = True, seed: int = 0,
              log_every: int = 0, units: int = 32, hard: bool = False,
              easy_share: float = 0.0, **overrides) -> dict:
    """Trains a fresh matcher on the toy problem → {"auc", "accuracy" (held-out pairs of
    the same kind, balanced), "loss" (first and last 20 steps' means), "grad_norms" (first
    step)}. ``hard``: the two-attribute problem with one-attribute negatives;
    ``easy_share``: that share of its training pairs from the one-attribute problem's
    random negatives instead (what ``model.random_negative_share`` does on real data)."""
    tf.random.set_seed(seed)
    matcher = toy_matcher(spa, sma, units, **overrides)
    step = make_train_step(matcher, keras.optimizers.Adam(lr))
    data = toy_problem(steps * batch, positive_share=positive_share,
                       region_scale=region_scale, seed=seed, hard=hard)
    if hard and easy_share > 0:  # random negatives: any other of the 16 identities
        easy = _toy_random_negatives(data, np.random.default_rng(seed + 7), easy_share)
        data = easy
    held = toy_problem(512, positive_share=0.5, region_scale=region_scale, seed=seed + 1000,
                       hard=hard)
    keys = ("regions", "input_word_ids", "input_mask", "match")
    losses, first_norms = [], None
    for s in range(steps):
        b = {k: tf.constant(data[k][s * batch:(s + 1) * batch]) for k in keys}
        loss, _, grads = step(b)
        losses.append(float(loss))
        if first_norms is None:
            first_norms = grad_norms(matcher, grads)
        if log_every and (s + 1) % log_every == 0:
            print(f"  step {s + 1}: bce {np.mean(losses[-log_every:]):.3f}")
    logits = matcher({k: tf.constant(held[k]) for k in keys[:3]})["logits"].numpy()
    return {"auc": auc(held["match"], logits),
            "accuracy": float(np.mean((logits > 0) == (held["match"] > 0.5))),
            "loss": (float(np.mean(losses[:20])), float(np.mean(losses[-20:]))),
            "grad_norms": first_norms}


# ---------------------------------------------------------------------------- real problem
def region_stats(regions: np.ndarray) -> dict:
    """Scale of the region features: mean / std of the values, share of exact zeros, mean
    l2 norm of a region, std across images of the per-channel image mean."""
    r = regions.astype(np.float64)
    return {"mean": float(r.mean()), "std": float(r.std()), "zero_share": float((r == 0).mean()),
            "region_norm": float(np.linalg.norm(r, axis=-1).mean()),
            "max": float(r.max()),
            "between_image_std_of_channel_means": float(r.mean(1).std(0).mean())}


def eq6_saturation(matcher, regions, ids, mask) -> dict:
    """|pre-tanh| of Eq. 6 (W_I i_k + W_H h_t + b_H) on a few pairs: mean and the share
    above 2 (tanh' < 0.07)."""
    spatial = matcher.get_layer("spatial_attention")
    if not spatial.enabled:
        return {}
    if matcher.settings["region_norm"] == "l2":  # what the matcher does first
        regions = tf.math.l2_normalize(regions, axis=-1)
    words = matcher.get_layer("word_embedding")(ids)
    hidden, _, _ = matcher.get_layer("word_lstm")(words, mask=tf.cast(mask, tf.bool))
    pre = (spatial.image_proj(regions)[:, None] + spatial.word_proj(hidden)[:, :, None]).numpy()
    a = np.abs(pre)
    image_part = np.abs(spatial.image_proj(regions).numpy())
    return {"pre_tanh_abs_mean": float(a.mean()), "share_above_2": float((a > 2).mean()),
            "image_term_abs_mean": float(image_part.mean())}


def grid_decomposition(score_fn, texts: dict, images: dict, n: int = 16, seed: int = 0) -> dict:
    """Logits of an n×n grid of (text, image) pairs split into variances: the text's main
    effect (row means), the image's (column means) and the interaction (the rest). Only
    the interaction can rank one text's candidates by match; the image effect makes hubs."""
    rng = np.random.default_rng(seed)
    ti = rng.choice(len(texts["label"]), n, replace=False)
    ii = rng.choice(len(images["label"]), n, replace=False)
    q, g = np.repeat(ti, n), np.tile(ii, n)
    grid = np.asarray(score_fn(q, g)).reshape(n, n)
    rows, cols = grid.mean(1, keepdims=True), grid.mean(0, keepdims=True)
    rest = grid - rows - cols + grid.mean()
    return {"text_var": float(rows.var()), "image_var": float(cols.var()),
            "interaction_var": float(rest.var())}


def encoder_state(matcher, ids, mask) -> dict:
    """Scale of the encoder's final (h, c), the decoder's initial state."""
    words = matcher.get_layer("word_embedding")(ids)
    _, h, c = matcher.get_layer("word_lstm")(words, mask=tf.cast(mask, tf.bool))
    return {"h_abs_mean": float(tf.reduce_mean(tf.abs(h))),
            "c_abs_mean": float(tf.reduce_mean(tf.abs(c))),
            "c_abs_max": float(tf.reduce_max(tf.abs(c)))}


def linear_probe(feats, labels, seed=0) -> float:
    """Identity accuracy of a logistic regression on ``feats``, fitted on all but one shot
    of each identity and tested on the held-out shot."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        test[rng.choice(idx)] = True
    x = (feats - feats[~test].mean(0)) / (feats[~test].std(0) + 1e-6)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x[~test], labels[~test])
    return float(clf.score(x[test], labels[test]))


def real(args) -> dict:
    from hgan.config import parse_overrides
    from hgan.evaluation import iatv_scoring, metrics, rerank
    from hgan.modeling.iatv import stage2
    from hgan.modeling.iatv.model import load_model
    from hgan.training import iatv_pairs

    model, config, path = load_model(args.model_dir, args.checkpoint or "latest")
    model.initialize_stage2()  # stage 1's CNN as stage 2's (the frozen-CNN phase)
    matcher_config = parse_overrides(config, args.set)
    t0 = time.time()
    tr_t, tr_i = iatv_scoring.encode_split(model, args.data_dir, config, "train")
    va_t, va_i = iatv_scoring.encode_split(model, args.data_dir, config, args.val_split)
    print(f"encoded train and {args.val_split} in {time.time() - t0:.0f}s; checkpoint {path}")
    if args.region_scale != 1.0:  # an experiment: the matcher's input scale
        for d in (tr_i, va_i):
            d["regions"] = d["regions"] * np.float32(args.region_scale)
    out = {"regions": region_stats(tr_i["regions"])}
    print("region features (train):", json.dumps(out["regions"]))

    # What the features carry: identity probes on the train images (held-out shot).
    out["probe"] = {
        "stage1_embedding": linear_probe(tr_i["embedding"], tr_i["label"]),
        "region_mean": linear_probe(tr_i["regions"].mean(1), tr_i["label"]),
        "region_max": linear_probe(tr_i["regions"].max(1), tr_i["label"])}
    print("identity probe on train images, held-out shot:", json.dumps(out["probe"]))

    s1_val = iatv_scoring.stage1_scores(va_t, va_i)
    out["val_stage1_R1"] = metrics.retrieval_metrics(s1_val, va_t["label"], va_i["label"])["R1"]
    t_idx, i_idx, match = iatv_pairs.mine_pairs(tr_t["embedding"], tr_i["embedding"],
                                                tr_t["label"], tr_i["label"],
                                                k=config.model.candidates)
    s1_tr = iatv_scoring.stage1_scores(tr_t, tr_i)
    out["mined"] = {"pairs": int(len(match)), "positive_share": float(match.mean()),
                    "stage1_auc_on_mined": auc(match, s1_tr[t_idx, i_idx])}
    # The same on val's candidates (what re-ranking sees): stage 1's AUC within its top k.
    top = rerank.top_k_ordered(s1_val, config.eval.rerank_k)
    vq = np.repeat(np.arange(len(top)), top.shape[1])
    vm = (va_t["label"][vq] == va_i["label"][top.ravel()]).astype(np.float32)
    out["val_candidates"] = {"positive_share": float(vm.mean()),
                             "stage1_auc": auc(vm, s1_val[vq, top.ravel()])}
    print("mined train pairs:", json.dumps(out["mined"]), " val top-k:",
          json.dumps(out["val_candidates"]), " val stage-1 R1", out["val_stage1_R1"])

    tf.random.set_seed(args.seed)
    matcher = stage2.build_matcher(matcher_config, model.vocab_size,
                                   region_dim=tr_i["regions"].shape[-1])
    if args.init_from_stage1:
        matcher.initialize_from_stage1(model.stage1)
    out["eq6_at_init"] = eq6_saturation(matcher, tf.constant(tr_i["regions"][:8]),
                                        tf.constant(tr_t["input_word_ids"][:8]),
                                        tf.constant(tr_t["input_mask"][:8]))
    print("Eq. 6 at init:", json.dumps(out["eq6_at_init"]))
    out["encoder_state"] = encoder_state(matcher, tf.constant(tr_t["input_word_ids"][:64]),
                                         tf.constant(tr_t["input_mask"][:64]))
    print("encoder final state (decoder's initial):", json.dumps(out["encoder_state"]))
    lr = (args.lr or matcher_config.model.stage2_learning_rate
          or matcher_config.train.learning_rate)
    print(f"stage-2 Adam learning rate {lr:g}")
    step = make_train_step(matcher, keras.optimizers.Adam(lr))
    score = tf.function(lambda b: matcher(b, training=False)["logits"], reduce_retracing=True)

    def val_two_stage():
        def fn(q, g):
            return score({"regions": va_i["regions"][g],
                          "input_word_ids": va_t["input_word_ids"][q],
                          "input_mask": va_t["input_mask"][q]}).numpy()
        t2i = rerank.rerank(s1_val, fn, config.eval.rerank_k, 800)
        m = metrics.retrieval_metrics(t2i, va_t["label"], va_i["label"])
        logits = fn(vq, top.ravel())
        return m["R1"], m["mAP"], auc(vm, logits)

    def val_grid():
        return grid_decomposition(lambda q, g: score({
            "regions": va_i["regions"][g], "input_word_ids": va_t["input_word_ids"][q],
            "input_mask": va_t["input_mask"][q]}).numpy(), va_t, va_i)

    bs = matcher_config.data.batch_size
    sampler = iatv_pairs.sample_pairs(
        t_idx, i_idx, match, tr_t["label"], tr_i["label"], matcher_config.model.positive_share,
        matcher_config.model.random_negative_share, seed=args.seed)
    print(f"pairs: {100 * matcher_config.model.positive_share:.0f}% positives (0: as mined), "
          f"{100 * matcher_config.model.random_negative_share:.0f}% of negatives random")
    history, train_time = [], 0.0
    t0 = time.time()
    for s in range(args.steps):
        drawn = np.array([next(sampler) for _ in range(bs)])
        tj, ij, yj = drawn[:, 0], drawn[:, 1], drawn[:, 2].astype(np.float32)
        b = {"regions": tf.constant(tr_i["regions"][ij]),
             "input_word_ids": tf.constant(tr_t["input_word_ids"][tj]),
             "input_mask": tf.constant(tr_t["input_mask"][tj]),
             "match": tf.constant(yj)}
        t1 = time.time()
        loss, logits, grads = step(b)
        train_time += time.time() - t1
        history.append((float(loss), float(auc(yj, logits.numpy()))))
        if s == 0 or (s + 1) % args.log_every == 0:
            norms = grad_norms(matcher, grads)
            r1, m_ap, vauc = val_two_stage()
            h = np.array(history[-args.log_every:])
            print(f"step {s + 1}: bce {h[:, 0].mean():.3f} batch-AUC {np.nanmean(h[:, 1]):.3f}"
                  f" | val two-stage R1 {r1:.1f} mAP {m_ap:.1f} candidate-AUC {vauc:.3f}"
                  f" | {time.time() - t0:.0f}s ({train_time:.0f}s training)")
            print("   grad norms:", " ".join(f"{k}={v:.2e}" for k, v in norms.items()))
            print("   val logit grid:", " ".join(f"{k}={v:.3g}" for k, v in val_grid().items()))
    out["final"] = dict(zip(("val_two_stage_R1", "val_two_stage_mAP", "val_candidate_auc"),
                            val_two_stage()))
    print("final:", json.dumps(out["final"]))
    return out


def fusion(args) -> dict:
    from hgan.evaluation import iatv_scoring, metrics, rerank
    from hgan.modeling.iatv.model import load_model

    model, config, path = load_model(args.model_dir, args.checkpoint or "best")
    weights = [float(w) for w in args.weights.split(",")]
    tau, k = config.model.cmce_temperature, config.eval.rerank_k
    pairs = iatv_scoring._compiled(model)["pairs"]
    print(f"checkpoint {path}; two-stage score = stage-2 logit + w * cos / {tau} over each "
          f"query's stage-1 top {k}; the config's w is {config.model.stage1_weight}")
    out = {}
    for split in args.splits.split(","):
        texts, images = iatv_scoring.encode_split(model, args.data_dir, config, split)
        stage1 = iatv_scoring.stage1_scores(texts, images)
        logits = {}  # (text, image) -> stage-2 logit, for every pair some query re-ranks
        wanted = {(int(q), int(g)) for q, row in enumerate(rerank.top_k_ordered(stage1, k))
                  for g in row}
        wanted |= {(int(t), int(g)) for g, row in enumerate(rerank.top_k_ordered(stage1.T, k))
                   for t in row}
        todo = np.array(sorted(wanted))
        for a in range(0, len(todo), 512):
            t, i = todo[a:a + 512, 0], todo[a:a + 512, 1]
            tokens = {key: texts[key][t] for key in ("input_word_ids", "input_mask")}
            logits.update(zip(map(tuple, todo[a:a + 512].tolist()),
                              pairs(images["regions"][i], tokens).numpy().tolist()))
        lookup = np.vectorize(lambda t, g: logits[(int(t), int(g))], otypes=[np.float64])

        def r1(t2i, i2t):
            both = metrics.both_directions(t2i, i2t, texts["label"], images["label"])
            return both["t2i"]["R1"], both["i2t"]["R1"]

        row = {"stage1": r1(stage1, stage1.T)}
        for w in weights:  # the model's own two-stage score at each weight
            model.config = dataclasses.replace(
                config, model=dataclasses.replace(config.model, stage1_weight=w))
            t2i = rerank.rerank(stage1, lambda q, g: model.two_stage_score(
                lookup(q, g), stage1[q, g]), k)
            i2t = rerank.rerank(stage1.T, lambda q, g: model.two_stage_score(
                lookup(g, q), stage1[g, q]), k)
            row[f"w={w:g}"] = r1(t2i, i2t)
        model.config = config
        out[split] = row
        print(f"{split}: R1 t2i / i2t  " + "  ".join(f"{name} {a:.1f} / {b:.1f}"
                                                     for name, (a, b) in row.items()))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=("toy", "real", "fusion"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.0,
                   help="Adam rate; 0: toy 1e-3, real the config's stage-2 rate")
    p.add_argument("--positive_share", type=float, default=0.0,
                   help="toy: share of positive pairs (default 0.5); real: use "
                        "--set=model.positive_share=... / model.random_negative_share=...")
    p.add_argument("--seed", type=int, default=0)
    # toy
    p.add_argument("--spa", type=int, default=1)
    p.add_argument("--sma", type=int, default=1)
    p.add_argument("--region_scale", type=float, default=1.0,
                   help="multiplies the region features (toy and real)")
    p.add_argument("--units", type=int, default=32)
    p.add_argument("--ablations", action="store_true", help="toy: all four SPA/SMA settings")
    p.add_argument("--hard", action="store_true",
                   help="toy: two attributes, every negative differs in one")
    p.add_argument("--easy_share", type=float, default=0.0,
                   help="toy --hard: share of negatives replaced by random ones")
    p.add_argument("--region_norm", default="none", help="toy: model.region_norm")
    # real
    p.add_argument("--model_dir")
    p.add_argument("--data_dir")
    p.add_argument("--checkpoint", default=None,
                   help="real: default latest; fusion: default best (what eval.py reads)")
    p.add_argument("--val_split", default="val")
    p.add_argument("--set", action="append", default=[], help="matcher config field=value")
    p.add_argument("--init_from_stage1", type=int, default=1)
    p.add_argument("--log_every", type=int, default=50)
    p.add_argument("--output_json")
    # fusion
    p.add_argument("--splits", default="val,test")
    p.add_argument("--weights", default="0,0.1,0.25,0.5,1,2")
    args = p.parse_args()
    if args.mode == "toy":
        share = args.positive_share or 0.5
        settings = ([(1, 1), (0, 1), (1, 0), (0, 0)] if args.ablations
                    else [(args.spa, args.sma)])
        out = {}
        for spa, sma in settings:
            t0 = time.time()
            r = train_toy(args.steps, lr=args.lr or 1e-3, positive_share=share,
                          region_scale=args.region_scale, spa=bool(spa), sma=bool(sma),
                          seed=args.seed, log_every=args.log_every, units=args.units,
                          hard=args.hard, easy_share=args.easy_share,
                          region_norm=args.region_norm)
            print(f"SPA={spa} SMA={sma}: held-out AUC {r['auc']:.3f} acc {r['accuracy']:.3f}"
                  f" bce {r['loss'][0]:.3f} -> {r['loss'][1]:.3f} ({time.time() - t0:.0f}s)")
            print("   first-step grad norms:",
                  " ".join(f"{k}={v:.2e}" for k, v in r["grad_norms"].items()))
            out[f"spa{spa}_sma{sma}"] = r
    elif args.mode == "fusion":
        out = fusion(args)
    else:
        out = real(args)
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
