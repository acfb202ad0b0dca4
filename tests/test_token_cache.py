"""``hgan.training.hgan_token_cache``: a frozen BERT's token embeddings computed once, used in training."""
import numpy as np
import pytest

from hgan.data import pipeline, records
from hgan.training import hgan_token_cache as token_cache
from hgan.modeling.hgan.model import build_model
from hgan.tf_compat import tf
from hgan.training import loop
from hgan.training.hgan_task import HGANTask


@pytest.fixture()
def config(tiny_config):
    return tiny_config.replace(bert="scratch:2x16", bert_layers="last", batch_size=4,
                               identities_per_batch=2, checkpoint_every=2, max_steps=3)


def test_cached_tokens_give_the_text_features_of_the_full_encoder(tiny_data, config):
    tokenizer = pipeline.make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size + 1, 6)
    cache = token_cache.build(model, tiny_data, config, tokenizer, log=lambda _: None)
    captions = {c for e in tf.data.TFRecordDataset(pipeline.split_files(tiny_data, "train"))
                for c in records.parse_example(e)["captions"].numpy()}
    assert cache is not None and cache.size == len(captions) > 1
    batch = next(iter(pipeline.train_dataset(tiny_data, config, tokenizer, keep_caption=True)))
    full = model.encode_text(batch, training=False)
    cached = model.encode_text(batch, training=False, tokens=cache.lookup(batch["caption"]))
    for key in full:
        np.testing.assert_allclose(cached[key].numpy(), full[key].numpy(), atol=1e-5,
                                   err_msg=key)
    with pytest.raises(tf.errors.InvalidArgumentError, match="not in the cache"):
        cache.lookup(tf.constant(["a caption never seen"]))


def test_no_cache_when_bert_trains_or_it_would_not_fit(tiny_data, config):
    tokenizer = pipeline.make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size + 1, 6)
    assert token_cache.build(model, tiny_data, config.replace(bert_trainable=True),
                             tokenizer) is None
    assert token_cache.build(model, tiny_data, config.replace(use_bert=False),
                             tokenizer) is None
    lines = []
    assert token_cache.build(model, tiny_data, config.replace(token_cache_gib=1e-9),
                             tokenizer, log=lines.append) is None
    assert "token cache off" in lines[0]


@pytest.mark.slow
def test_training_uses_the_cache_and_learns_the_same_variables(tiny_data, config, tmp_path):
    model_dir = str(tmp_path / "run")
    lines = []
    trainer = HGANTask(config, tiny_data)
    before = [v.numpy().copy() for v in trainer.model.trainable_variables]
    summary = loop.fit(trainer, model_dir, validate=False, log=lines.append)
    assert summary["step"] == 3 and trainer.token_cache is not None
    assert any(line.startswith("token cache:") for line in lines)
    after = trainer.model.trainable_variables
    # Every variable learns except the self-attention key biases, whose gradient is zero
    # (a softmax does not change when one constant is added to all its logits: q·b_k is
    # the same for every key), and the query biases, whose gradient Σ g_ij (k_j - k̄) is at
    # rounding level in this tiny model (oneDNN's kernels keep them, Eigen's noise moved
    # them, which this assertion used to rely on).
    still = ("self_attention/key/bias", "self_attention/query/bias")
    moved = [not np.allclose(a, b.numpy()) for a, b in zip(before, after)]
    stuck = [v.name for v, m in zip(after, moved) if not m]
    assert all(any(k in name for k in still) for name in stuck), stuck


def test_flipped_pairs_find_the_embeddings_of_their_swapped_captions(tmp_path):
    """With random_flip a flipped pair's caption reaches the step with left and right
    swapped: the cache holds each such caption's own (contextual) embeddings too."""
    from hgan.config import preset
    from tests_support import write_sided_dataset
    data = write_sided_dataset(tmp_path / "sided")
    config = preset("tiny").replace(
        vocab_file=f"{data}/vocab.txt", image_height=24, image_width=12, max_len=20,
        max_phrases=4, batch_size=4, identities_per_batch=2, bert="scratch:2x16",
        bert_layers="last")
    assert config.data.random_flip
    tokenizer = pipeline.make_tokenizer(config)
    model = build_model(config, tokenizer.vocab_size + 1, 4)
    lines = []
    cache = token_cache.build(model, data, config, tokenizer, log=lines.append)
    # 3 colours × 2 sentences, every one naming both sides: each also swapped.
    assert cache.size == 12
    assert lines[0].startswith("token cache: 6 train captions + 6 with left and right swapped")
    embedder = model.text_encoder.get_layer("token_embeddings")

    def embed(captions):
        inputs = tokenizer(tf.constant(captions))
        return embedder({k: inputs[k] for k in ("input_word_ids", "input_mask",
                                                 "input_type_ids")}, training=False).numpy()

    batches = pipeline.train_dataset(data, config, tokenizer, keep_caption=True).take(4)
    captions = np.concatenate([b["caption"].numpy() for b in batches])
    originals = {c for e in tf.data.TFRecordDataset(pipeline.split_files(data, "train"))
                 for c in records.parse_example(e)["captions"].numpy()}
    flipped = [c for c in captions if c not in originals]
    assert flipped  # the pipeline fed swapped captions; each row is its own caption's
    np.testing.assert_allclose(cache.lookup(tf.constant(captions)).numpy(),
                               embed(list(captions)), atol=1e-5)
    # Without the flip the cache holds the training captions alone.
    assert token_cache.build(model, data, config.replace(random_flip=False), tokenizer,
                             log=lambda _: None).size == 6
