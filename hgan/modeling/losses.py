"""HGAN's training objectives (§3.4) as pure functions of features and labels.

All take the batch's features already gathered across replicas, so the value on N
replicas equals the value on one replica over the same global batch.
"""
from __future__ import annotations

from hgan.tf_compat import tf


def triplet_ranking_loss(scores, text_labels, image_labels, margin: float,
                         hardest: bool = False):
    """Eq. 9, the bidirectional hinge ranking loss over in-batch negatives.

    Args:
      scores: [B, B] S(V_j, T_i) of text i and image j; the diagonal holds the matched
        pairs (text i was drawn with image i).
      text_labels, image_labels: [B] identities; pairs of the same identity are not
        negatives (the batch may hold several pairs of one person).
      margin: γ of Eq. 9.
      hardest: use only the hardest negative of each anchor (VSE++) instead of the sum.

    Returns: scalar, mean over anchors of (Σ over negative sentences given an image +
      Σ over negative images given a sentence).
    """
    scores = tf.cast(scores, tf.float32)
    positive = tf.linalg.diag_part(scores)
    negative = tf.cast(tf.not_equal(text_labels[:, None], image_labels[None, :]), tf.float32)
    # Row i: sentence i is the anchor, images j the candidates; column j: image j anchors.
    cost_images = tf.nn.relu(margin - positive[:, None] + scores) * negative
    cost_texts = tf.nn.relu(margin - positive[None, :] + scores) * negative
    if hardest:
        per_text = tf.reduce_max(cost_images, axis=1)
        per_image = tf.reduce_max(cost_texts, axis=0)
    else:
        per_text = tf.reduce_sum(cost_images, axis=1)
        per_image = tf.reduce_sum(cost_texts, axis=0)
    return tf.reduce_mean(per_text) + tf.reduce_mean(per_image)


def identification_loss(image_logits, text_logits, labels):
    """Eq. 10 for both modalities through one shared classifier: −1/N Σ log softmax(Wᵀx+b)_y.

    Returns the image term plus the text term.
    """
    labels = tf.cast(labels, tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    return (tf.reduce_mean(ce(labels, tf.cast(image_logits, tf.float32)))
            + tf.reduce_mean(ce(labels, tf.cast(text_logits, tf.float32))))


def cmpm_loss(image_embeddings, text_embeddings, labels, epsilon: float = 1e-8,
              temperature: float = 0.0):
    """Eq. 11, the pairwise KL loss (CMPM, Zhang & Lu 2018), both directions.

    z_ij = v_iᵀ t̄_j (t̄: l2-normalised), p_ij = softmax_j(z_ij), q_ij = y_ij / Σ_k y_ik with
    y_ij = 1 when image i and text j share an identity; L = mean_i Σ_j p_ij log(p_ij /
    (q_ij + ε)), plus the same with texts as anchors. (The paper prints a leading minus;
    the KL divergence it describes is minimised, so it is dropped here.)

    ``temperature`` τ > 0: z_ij = cos(v_i, t_j) / τ instead, both sides normalised (the
    SDM form of Jiang & Ye, CVPR 2023). Eq. 11's anchor norm is a per-sample inverse
    temperature the model may grow, and in its text-anchored direction a component common
    to all images cancels from the softmax, so nothing there keeps the images apart.
    """
    image = tf.cast(image_embeddings, tf.float32)
    text = tf.cast(text_embeddings, tf.float32)
    match = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    q = match / tf.reduce_sum(match, axis=1, keepdims=True)
    if temperature:
        image = tf.math.l2_normalize(image, -1) / temperature
        text = tf.math.l2_normalize(text, -1) / temperature

    def direction(anchor, other):
        logits = tf.matmul(anchor, tf.math.l2_normalize(other, -1), transpose_b=True)
        p = tf.nn.softmax(logits, axis=1)
        kl = p * (tf.nn.log_softmax(logits, axis=1) - tf.math.log(q + epsilon))
        return tf.reduce_mean(tf.reduce_sum(kl, axis=1))

    return direction(image, text) + direction(text, image)


def cmce_loss(image_embeddings, text_embeddings, labels, image_buffer, text_buffer,
              temperature: float = 0.04):
    """IATV Eqs. 1–3, the cross-modal cross-entropy against identity feature buffers.

    Each image feature is classified against the textual buffer S [N_ids, D] and each text
    feature against the visual buffer V [N_ids, D]: p(k|v) = softmax_k(S_kᵀ v / σ), with
    l2-normalised features and buffer rows; the loss is the mean cross-entropy to the own
    identity, images plus texts.
    """
    labels = tf.cast(labels, tf.int32)
    image = tf.math.l2_normalize(tf.cast(image_embeddings, tf.float32), -1)
    text = tf.math.l2_normalize(tf.cast(text_embeddings, tf.float32), -1)
    logits_image = tf.matmul(image, tf.math.l2_normalize(text_buffer, -1),
                             transpose_b=True) / temperature
    logits_text = tf.matmul(text, tf.math.l2_normalize(image_buffer, -1),
                            transpose_b=True) / temperature
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits
    return (tf.reduce_mean(ce(labels, logits_image))
            + tf.reduce_mean(ce(labels, logits_text)))


def l2_penalty(variables, weight_decay: float):
    """Coupled weight decay: weight_decay · Σ ½‖w‖² over the rank ≥ 2 variables (kernels and
    embeddings; biases and normalisation scales/offsets are not decayed), the term 2020
    TensorFlow code added to the loss for "weight decay" (``tf.nn.l2_loss`` is ½‖w‖²)."""
    kernels = [tf.cast(v, tf.float32) for v in variables if len(v.shape) >= 2]
    if not kernels:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(v) for v in kernels])
