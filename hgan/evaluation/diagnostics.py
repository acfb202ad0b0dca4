"""Why a model does or does not learn: numbers read off a split's features and scores.

hgan-diagnose prints them for a model_dir; hgan-eval reports the selection
share (Fig. 4 as a number). Each function takes numpy arrays from
``hgan.evaluation.hgan_scoring.encode_split`` / ``Scorer`` and is cheap at the demo's sizes.

* ``spread``: how collapsed a set of embeddings is (mean pairwise cosine, the share of
  variance on the first principal axis). Near 1 / near 1: every item points one way, and
  rankings come from tiny differences.
* ``hubness``: the share of queries whose top-1 is the single most frequent top-1 item.
  When one caption tops every image's list, image-to-text R1 sits exactly at chance.
* ``selection_words``: the words each image region selects (the word level's inference-time
  α, Eqs. 5–7) for every caption with its own image, with the share of content words
  (colours, garments, accessories, hair: ``CONTENT_WORDS``) and of punctuation.
* ``gumbel_overlap``: how much of the noiseless top-k the training-time Gumbel top-k keeps
  (Algorithm 1 with its noise), against k / n for a uniformly random pick.
* ``gradient_table``: on one training batch, each loss term's gradient norm and the
  variables with the largest gradients (a collapse shows as norms of 1e4 and more, and
  the variables say which path they come through).
"""
from __future__ import annotations

import collections
import string

import numpy as np

from hgan.evaluation import metrics
from hgan.tf_compat import tf

# Content words of pedestrian descriptions: what a body region can show.
COLOURS = set("""black white red blue green yellow orange purple pink brown grey gray beige
    navy khaki maroon teal turquoise violet silver golden gold cream tan olive burgundy
    colorful colourful dark light bright pale blond blonde""".split())
GARMENTS = set("""shirt t tshirt tee top blouse sweater jumper sweatshirt hoodie jacket coat
    vest cardigan blazer suit uniform dress skirt belt tie scarf pants trousers jeans shorts
    leggings tights shoes sneakers trainers boots sandals slippers heels flats loafers socks
    stockings sleeve sleeves sleeved collar zip button clothes outfit footwear""".split())
ACCESSORIES = set("""cap hat helmet hood beanie backpack bag handbag purse wallet umbrella
    bottle phone watch bracelet necklace glasses sunglasses mask gloves brimmed baseball
    shoulder""".split())
HAIR = set("hair ponytail bun beard long short curly straight bald".split())
CONTENT_WORDS = COLOURS | GARMENTS | ACCESSORIES | HAIR


def is_content(word: str) -> bool:
    return word.lower() in CONTENT_WORDS


def is_punctuation(word: str) -> bool:
    return bool(word) and all(c in string.punctuation for c in word)


def spread(x: np.ndarray) -> dict:
    """Mean pairwise cosine of the rows of ``x`` [N, D] and the first principal axis's share
    of the variance."""
    x = np.asarray(x, np.float64)
    unit = metrics.unit_rows(x, np.float64)
    cos = unit @ unit.T
    n = len(x)
    mean_cos = float((cos.sum() - np.trace(cos)) / max(n * (n - 1), 1))
    centred = x - x.mean(axis=0)
    sv = np.linalg.svd(centred, compute_uv=False) ** 2
    return {"mean_cosine": mean_cos, "top_axis_share": float(sv[0] / max(sv.sum(), 1e-12))}


def hubness(scores: np.ndarray) -> dict:
    """``scores`` [queries, gallery]: the share of queries whose top-1 is the most common
    top-1 item, and how many distinct items are ever ranked first."""
    top = np.asarray(scores).argmax(axis=1)
    counts = np.bincount(top)
    return {"top1_hub_share": float(counts.max() / len(top)),
            "distinct_top1": int((counts > 0).sum())}


SELECTION_QUERIES = 400  # queries selection_words reads by default
SELECTION_BLOCK = 100  # captions per call of the head in selection_words


def selection_words(head, texts: dict, images: dict, words_of,
                    limit: int = SELECTION_QUERIES) -> dict:
    """Words the word head's regions select for each caption with its own image.

    ``words_of(caption bytes)`` gives the caption's word keys in slot order (e.g.
    ``CaptionTokenizer.caption_words``; WordPiece strings for ``word_keys="wordpieces"``).
    Returns the content and punctuation shares of all selections, the most selected words
    and, per region, its most selected word."""
    picked = collections.Counter()
    per_region = collections.defaultdict(collections.Counter)
    total = content = punct = 0
    count = min(limit, len(texts["label"]))
    alphas = []
    for start in range(0, count, SELECTION_BLOCK):  # each caption with its own image
        rows = slice(start, min(start + SELECTION_BLOCK, count))
        alpha, _ = head.selections(texts["word"][rows], texts["word_mask"][rows],
                                   images["word"][np.asarray(texts["image_index"][rows])],
                                   paired=True)
        alphas.append(alpha.numpy()[:, 0])  # [captions, regions, slots]
    alphas = np.concatenate(alphas) if alphas else []
    for q in range(count):
        alpha = alphas[q]
        slots = np.flatnonzero(texts["word_mask"][q] > 0)
        words = words_of(texts["caption"][q])
        for n, row in enumerate(alpha):
            for slot in np.flatnonzero(row > 0.5):
                if slot not in slots:
                    continue
                position = int(np.searchsorted(slots, slot))
                word = words[position] if position < len(words) else "?"
                picked[word] += 1
                per_region[n][word] += 1
                total += 1
                content += is_content(word)
                punct += is_punctuation(word)
    return {"selections": total, "content_share": content / max(total, 1),
            "punctuation_share": punct / max(total, 1),
            "most_selected": picked.most_common(10),
            "region_favourite": [per_region[n].most_common(1)[0][0] if per_region[n] else ""
                                 for n in sorted(per_region)]}


def gumbel_overlap(head, texts: dict, images: dict, draws: int = 8, limit: int = 200,
                   seed: int = 0) -> dict:
    """For each caption with its own image, the image-to-text γ rows (one per region): the
    mean share of the noiseless top-k1 that ``head.select_words`` keeps under training-time
    noise, with the chance level k1 / (words) of a uniform pick."""
    tf.random.set_seed(seed)
    keep, chance = [], []
    for q in range(min(limit, len(texts["label"]))):
        g = int(texts["image_index"][q])
        mask = texts["word_mask"][q:q + 1]
        t_gamma, _ = head.prepare_text(texts["word"][q:q + 1])
        v_gamma, _ = head.prepare_image(images["word"][g:g + 1])
        gamma = tf.transpose(head.pair_gamma(t_gamma, v_gamma), [0, 1, 3, 2])  # [1,1,N,R]
        row_mask = tf.broadcast_to(tf.cast(mask, tf.bool)[:, None, None, :], tf.shape(gamma))
        clean = head.select_words(gamma, mask=row_mask, training=False).numpy()
        words = float(mask.sum())
        if words <= head.k1:
            continue
        for _ in range(draws):
            noisy = head.select_words(gamma, mask=row_mask, training=True).numpy()
            hits = ((noisy > 0.5) & (clean > 0.5)).sum(-1) / head.k1
            keep.append(float(hits.mean()))
        chance.append(head.k1 / words)
    return {"noisy_keeps_clean_topk": float(np.mean(keep)) if keep else float("nan"),
            "chance": float(np.mean(chance)) if chance else float("nan")}


def gradient_table(model, batch: dict, top: int = 8) -> dict:
    """Gradient norms of one training-mode step on ``batch`` (a ``train_dataset`` batch):
    per loss term of ``compute_losses`` and, for the total, the ``top`` variables."""
    variables = model.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        out = model(batch, training=True)
        terms = model.compute_losses(out["text"], out["image"], batch["label"],
                                     training=True)
    per_term = {}
    for name, value in terms.items():
        grads = tape.gradient(value, variables, unconnected_gradients="zero")
        per_term[name] = float(tf.linalg.global_norm(grads))
        if name == "total":
            norms = sorted(((float(tf.norm(g)), v.name) for g, v in zip(grads, variables)),
                           reverse=True)
    del tape
    return {"loss": {k: float(v) for k, v in terms.items()}, "grad_norm": per_term,
            "largest": [[name, round(norm, 3)] for norm, name in norms[:top]]}
