"""IATV's identity feature buffers (§3.1.1, Fig. 2): the V and S that Eqs. 1–3 compare with.

The visual buffer V and the textual buffer S hold one row per training identity, [N_ids, D]
(the paper writes them transposed, D × N). They are non-trainable ``tf.Variable``s owned by
a ``tf.Module``, so ``tf.train.Checkpoint(buffers=...)`` saves and restores them with the
weights; they are not part of the Keras model (``model.get_weights()`` does not see them).
"""
from __future__ import annotations

import numpy as np

from hgan.tf_compat import tf


def identity_means(features, labels, num_identities: int):
    """Per-identity mean of l2-normalised samples → (means [N_ids, D], counts [N_ids]).

    Rows of identities without a sample are zeros (count 0).
    """
    features = tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)
    labels = tf.cast(labels, tf.int32)
    sums = tf.math.unsorted_segment_sum(features, labels, num_identities)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(labels, tf.float32), labels,
                                          num_identities)
    return sums / tf.maximum(counts, 1.0)[:, None], counts


class IdentityBuffers(tf.Module):
    """The visual buffer V [N_ids, D] and the textual buffer S [N_ids, D] of §3.1.1.

    * ``initialize``: "before the first iteration ... if an identity has multiple
      descriptions or images, its stored features in the buffers are the average of the
      multiple samples" — the mean of the l2-normalised features (§4.2 normalises both
      modalities), renormalised.
    * ``update``: after the backward pass (Fig. 2, Step-2), the rows of the identities in the
      batch become the "running weighted average" S_t = 0.5 S_t + 0.5 s, V_t = 0.5 V_t + 0.5 v.

    ``renormalize`` (default True) puts every stored row back on the unit sphere after
    averaging. The paper does not say; the CMCE loss (``hgan.modeling.losses.cmce_loss``) compares
    normalised rows anyway, so it only decides how much weight the old and new directions
    get in the next 0.5/0.5 average (with it, exactly half each).

    Under a distribution strategy, create the buffers inside ``strategy.scope()``.
    """

    def __init__(self, num_identities: int, dim: int, momentum: float = 0.5,
                 renormalize: bool = True, name: str = "identity_buffers"):
        super().__init__(name=name)
        if num_identities < 1 or dim < 1:
            raise ValueError(f"need num_identities, dim >= 1, got {num_identities}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_identities, self.dim = int(num_identities), int(dim)
        self.momentum, self.renormalize = float(momentum), bool(renormalize)
        zeros = tf.zeros([self.num_identities, self.dim], tf.float32)
        self.image = tf.Variable(zeros, trainable=False, name="image_buffer")  # V
        self.text = tf.Variable(zeros, trainable=False, name="text_buffer")  # S

    def _finish(self, rows):
        return tf.math.l2_normalize(rows, axis=-1) if self.renormalize else rows

    def initialize(self, image_features, image_labels, text_features, text_labels):
        """Fills both buffers from one pass over the training set (every sample once).

        Args:
          image_features: [N_images, D] stage-1 visual features; image_labels [N_images].
          text_features: [N_texts, D] stage-1 textual features; text_labels [N_texts].
        Returns: (image_counts, text_counts), [N_ids] numpy arrays of samples per identity.
        An identity with no sample in a modality keeps a zero row there: its logit in
        Eqs. 1–2 is 0 until its first update, which (renormalised) sets the row to the
        new feature's direction. Call in eager or cross-replica context.
        """
        image_mean, image_counts = identity_means(image_features, image_labels,
                                                  self.num_identities)
        text_mean, text_counts = identity_means(text_features, text_labels,
                                                self.num_identities)
        self.image.assign(self._finish(image_mean))
        self.text.assign(self._finish(text_mean))
        return image_counts.numpy().astype(np.int64), text_counts.numpy().astype(np.int64)

    def fill(self, image_features, image_labels, text_features, text_labels,
             log=print) -> None:
        """``initialize`` from one pass over the training set, after checking every label
        has a row; logs what it filled."""
        top = max(int(np.max(text_labels)), int(np.max(image_labels)))
        if top >= self.num_identities:
            raise ValueError(f"training label {top} but only {self.num_identities} identities "
                             "(num_classes / the manifest)")
        image_counts, _ = self.initialize(image_features, image_labels, text_features,
                                          text_labels)
        log(f"identity buffers: {self.num_identities} identities from {len(image_labels)} "
            f"images and {len(text_labels)} captions "
            f"({int((image_counts == 0).sum())} without an image)")

    def update(self, image_features, text_features, labels, when=True):
        """Step-2 of Fig. 2: rows of the batch's identities ← 0.5·old + 0.5·new.

        Args:
          image_features, text_features: [B, D], the features of this step's forward pass
            (before the weight update; the paper's "newly generated features"), pairs of a
            batch: text i and image i show identity ``labels[i]``.
          labels: [B] identities.
          when: a scalar bool; False leaves the buffers as they are (a skipped step).

        "New" is the identity's batch mean (of l2-normalised samples): the paper's rule is
        written for one sample; applying it sample by sample would depend on batch order.

        Under ``MirroredStrategy`` call it in replica context with the features and labels
        **all-gathered** across replicas (every replica then holds the same global batch):
        the update runs once, in a ``merge_call``, from the first replica's copy, and is
        written to every mirror. In eager or cross-replica context it applies directly.
        """
        args = (tf.stop_gradient(tf.cast(image_features, tf.float32)),
                tf.stop_gradient(tf.cast(text_features, tf.float32)),
                tf.cast(labels, tf.int32), tf.cast(when, tf.bool))
        if tf.distribute.in_cross_replica_context():
            self._apply(tf.distribute.get_strategy(), *args)
            return
        tf.distribute.get_replica_context().merge_call(self._apply, args=args)

    def _apply(self, strategy, image_features, text_features, labels, when):
        # All replicas passed the same gathered batch: using one copy applies it once.
        first = lambda x: strategy.experimental_local_results(x)[0]  # noqa: E731
        image_features, text_features, labels, when = map(
            first, (image_features, text_features, labels, when))
        tf.__internal__.smart_cond.smart_cond(
            when, lambda: self._mix(strategy, image_features, text_features, labels),
            lambda: None)

    def _mix(self, strategy, image_features, text_features, labels):
        rows, slot = tf.unique(labels)
        count = tf.shape(rows)[0]
        new_image = tf.math.unsorted_segment_mean(
            tf.math.l2_normalize(image_features, axis=-1), slot, count)
        new_text = tf.math.unsorted_segment_mean(
            tf.math.l2_normalize(text_features, axis=-1), slot, count)

        def mix(variable, rows, new):
            old = tf.gather(variable, rows)
            mixed = self._finish(self.momentum * old + (1.0 - self.momentum) * new)
            return variable.scatter_update(tf.IndexedSlices(mixed, rows))

        strategy.extended.update(self.image, mix, args=(rows, new_image))
        strategy.extended.update(self.text, mix, args=(rows, new_text))
