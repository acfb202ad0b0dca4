"""IATV stage 2's toy problem with a known answer: if the matcher cannot learn this, it
cannot learn the demo either (tests/test_iatv_stage2.py trains it).

Regions whose channel j is raised in a few places are identity j, the caption has one word
that names j; pairs of the same identity match. Known answer: separable, but only through an
interaction of word and region (no single modality predicts a match).
"""
from __future__ import annotations

import numpy as np

from hgan.tf_compat import keras, tf

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
