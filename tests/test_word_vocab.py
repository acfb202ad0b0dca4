"""IATV §3.2.1's word vocabulary: built from the training captions, read by the tokenizer."""
import os

import numpy as np
import pytest

from hgan.config import preset
from hgan.data import pipeline, word_vocab
from hgan.data.tokenization import CaptionTokenizer
from hgan.training import run_dir


def test_vocabulary_is_specials_then_words_by_frequency():
    vocab = word_vocab.build(["A man in a Blue jacket.", "a woman, a BLUE café-coloured bag",
                              "man"], min_count=1)
    assert vocab[:4] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    # "a" ×4, then "blue" and "man" ×2 (alphabetical), then the rest once, alphabetical;
    # lower-cased, accents stripped, punctuation a word of its own (as the tokenizer splits).
    assert vocab[4:7] == ["a", "blue", "man"]
    assert set(vocab[7:]) == {",", "-", ".", "bag", "cafe", "coloured", "in", "jacket",
                              "woman"}
    assert vocab[7:] == sorted(vocab[7:])
    assert word_vocab.build(["a a b"], min_count=2) == list(word_vocab.SPECIALS) + ["a"]


def test_the_tokenizer_reads_one_token_per_word_and_unk_for_new_words(tmp_path):
    vocab = word_vocab.build(["a man in a blue jacket ."])
    path = str(tmp_path / word_vocab.FILE)
    word_vocab.write(path, vocab)
    tok = CaptionTokenizer(path, max_len=10, max_phrases=2)
    out = tok(["A man in a bluejacket, red jacket."])
    ids = out["input_word_ids"].numpy()[0]
    index = {w: i for i, w in enumerate(vocab)}
    unk = index["[UNK]"]
    # [CLS] a man in a [UNK](bluejacket) [UNK](,) [UNK](red) jacket . [SEP]: no word split
    # into pieces, every unknown word one [UNK].
    expected = [index["[CLS]"], index["a"], index["man"], index["in"], index["a"], unk, unk,
                unk, index["jacket"], index["[SEP]"]]
    np.testing.assert_array_equal(ids, expected)


def test_train_copies_the_data_vocabulary_into_the_run(tmp_path):
    data, model_dir = tmp_path / "data", str(tmp_path / "run")
    data.mkdir()
    config = preset("paper", "iatv")
    assert config.data.text_vocab == "words"  # §3.2.1 is the paper preset's reading
    with pytest.raises(FileNotFoundError, match="re-run hgan-prep"):
        run_dir.resolve_vocab(config, str(data), model_dir)
    with pytest.raises(ValueError, match="set vocab_file"):
        pipeline.make_tokenizer(config)
    word_vocab.write(str(data / word_vocab.FILE), word_vocab.build(["a red coat"]))
    resolved = run_dir.resolve_vocab(config, str(data), model_dir)
    assert resolved.data.vocab_file == os.path.join(model_dir, word_vocab.FILE)
    assert open(resolved.data.vocab_file).read() == open(data / word_vocab.FILE).read()
    assert run_dir.resolve_vocab(resolved, str(data), model_dir) == resolved  # idempotent
    assert pipeline.make_tokenizer(resolved).vocab_size == 7
    bert = preset("paper", "hgan")
    assert run_dir.resolve_vocab(bert, str(data), model_dir) is bert


def test_hgan_with_bert_refuses_the_word_vocabulary(tiny_config, tmp_path):
    from hgan.modeling.hgan import text
    config = tiny_config.replace(text_vocab="words", bert="scratch:2x16")
    with pytest.raises(ValueError, match="text_vocab=words needs use_bert=false"):
        text.build_token_embedder(config, 30)


def test_a_paper_run_refuses_fallback_tagged_phrases_unless_asked(tmp_path):
    from hgan.training.run_dir import check_phrase_tagger
    fallback = {"phrase_tagger": "fallback", "phrase_tagger_requested": "auto"}
    with pytest.raises(ValueError, match=r"fallback lexicon tagger .*requested: auto.*"
                                         r"nltk\.downloader averaged_perceptron_tagger_eng.*"
                                         r"--allow_fallback_tagger"):
        check_phrase_tagger(fallback, "DATA", paper=True)
    check_phrase_tagger(fallback, "DATA", paper=True, allow_fallback=True)  # asked for
    check_phrase_tagger(fallback, "DATA", paper=False)  # the demo and tiny presets
    check_phrase_tagger({"phrase_tagger": "perceptron"}, "DATA", paper=True)


def test_a_flip_never_makes_a_side_word_unknown(tmp_path):
    # A flipped training image has "left" and "right" swapped in its caption
    # (hgan.data.mirror): each side word's mirror image is in the vocabulary, next to it.
    from hgan.data import mirror
    caption = "Left hand on a bag, leftmost cap on the left."
    vocab = word_vocab.build([caption, "a bag"])
    # "right" counts as often as "left" (2), ranked among the words seen twice.
    assert vocab[4:9] == ["a", "bag", "left", "on", "right"]
    assert {"leftmost", "rightmost"} <= set(vocab)
    assert word_vocab.build(["a bag"]) == list(word_vocab.SPECIALS) + ["a", "bag"]
    path = str(tmp_path / word_vocab.FILE)
    word_vocab.write(path, vocab)
    ids = CaptionTokenizer(path, max_len=16, max_phrases=2)(
        mirror.mirror_captions([caption])[0])["input_word_ids"].numpy()[0]
    assert vocab.index("[UNK]") not in ids
    assert [vocab[i] for i in ids[:6]] == ["[CLS]", "right", "hand", "on", "a", "bag"]
