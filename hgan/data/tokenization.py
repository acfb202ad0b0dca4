"""Caption → BERT inputs, and noun-phrase spans → token membership masks, in-graph.

Uses ``tensorflow_text.BertTokenizer`` over the encoder's own ``vocab.txt`` so the
tokenisation matches the checkpoint, and runs inside ``tf.data`` and inside the exported
SavedModel alike.
"""
from __future__ import annotations

import os

import tensorflow_text as tf_text

from hgan.tf_compat import tf

# BERT's basic-tokenizer word split (tensorflow_text's bert_tokenizer patterns), reused so
# the words found here are exactly the words the WordPiece tokenizer sees.
from tensorflow_text.python.ops.bert_tokenizer import (  # noqa: E402
    _DELIM_REGEX_PATTERN as _DELIM_PATTERN,
    _KEEP_DELIM_NO_WHITESPACE_PATTERN as _KEEP_DELIM_PATTERN,
)


def vocab_path(bert: str, vocab_file: str = "") -> str:
    """The vocab of a BERT encoder: ``vocab_file`` if given, else ``{bert}/assets/vocab.txt``.

    For a TF-Hub handle the module is resolved (downloaded and cached) first.
    """
    if vocab_file:
        path = vocab_file
    else:
        root = bert
        if not os.path.isdir(root):
            import tensorflow_hub as hub  # network access only for real hub handles
            root = hub.resolve(bert)
        path = os.path.join(root, "assets", "vocab.txt")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"BERT vocab not found at {path}; pass vocab_file= or use a BERT SavedModel with "
            "assets/vocab.txt (data_prep.convert_bert writes one)")
    return path


def longest_caption(input_mask):
    """The batch's longest caption in token slots, from ``input_mask`` [B, L] (at least 1,
    so that an empty batch keeps one slot rather than a negative length): the length an
    encoder whose padding changes nothing can be trimmed to."""
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(input_mask, tf.int32), axis=-1))
    return tf.maximum(longest, 1)


class CaptionTokenizer(tf.Module):
    """Tokenises a batch of captions and maps phrase byte spans onto the tokens.

    ``__call__(captions [B] string, phrase_spans ragged [B, (P), 2] int32 or None)`` returns
      * ``input_word_ids``, ``input_mask``, ``input_type_ids``: [B, max_len] int32, the
        TF-Hub BERT encoder inputs ([CLS] tokens [SEP], zero-padded, truncated);
      * ``token_word_index``: [B, max_len] int32, the word each token belongs to, counting
        only words that are not punctuation (0, 1, ...), and -1 for [CLS], [SEP], padding
        and punctuation: the word level pools a word's WordPieces into one key;
      * ``phrase_token_mask``: [B, max_phrases, max_len] float32; row p marks the tokens
        lying inside noun phrase p (all zeros for a padded or fully truncated phrase).
    """

    def __init__(self, vocab_file: str, max_len: int, max_phrases: int,
                 lower_case: bool = True, name: str = "caption_tokenizer"):
        super().__init__(name=name)
        if max_len < 3:
            raise ValueError("max_len must leave room for [CLS], one token and [SEP]")
        self.max_len = max_len
        self.max_phrases = max_phrases
        self.lower_case = lower_case
        with tf.io.gfile.GFile(vocab_file) as f:
            vocab = [line.rstrip("\n") for line in f]
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file} lacks special tokens {missing}")
        self.cls_id = vocab.index("[CLS]")
        self.sep_id = vocab.index("[SEP]")
        self.pad_id = vocab.index("[PAD]")
        self.vocab_size = len(vocab)
        self._vocab = vocab
        # What the outputs depend on: two tokenizers of equal ``signature`` tokenise alike.
        self.signature = (hash(tuple(vocab)), max_len, max_phrases, lower_case)
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab), tf.range(len(vocab), dtype=tf.int64)),
            num_oov_buckets=1)
        self._tokenizer = tf_text.BertTokenizer(
            table, token_out_type=tf.int64, lower_case=lower_case, unknown_token="[UNK]")
        # BERT's basic tokenizer makes every punctuation character a word of its own, whose
        # one WordPiece is that character; a word is punctuation when all its pieces are.
        self._punctuation = tf.constant([_is_punctuation(t) for t in vocab] + [False])

    @tf.autograph.experimental.do_not_convert  # plain TF ops; nothing to convert
    def __call__(self, captions: tf.Tensor, phrase_spans=None) -> dict[str, tf.Tensor]:
        captions = tf.convert_to_tensor(captions, tf.string)
        tokens = self._tokenizer.tokenize(captions)  # ragged [B, words, pieces]
        body = self.max_len - 2
        ids = tokens.merge_dims(-2, -1)[:, :body]
        batch = tf.shape(captions)[0]

        def frame(values, first, last, pad):
            head = tf.fill([batch, 1], tf.cast(first, values.dtype))
            tail = tf.fill([batch, 1], tf.cast(last, values.dtype))
            framed = tf.concat([head, values, tail], axis=1)
            return framed.to_tensor(default_value=tf.cast(pad, values.dtype),
                                    shape=[None, self.max_len])

        out = {
            "input_word_ids": tf.cast(frame(ids, self.cls_id, self.sep_id, self.pad_id), tf.int32),
            "input_mask": tf.cast(frame(tf.ones_like(ids), 1, 1, 0), tf.int32),
            "input_type_ids": tf.zeros([batch, self.max_len], tf.int32),
            "token_word_index": tf.cast(frame(self._content_word_index(tokens)[:, :body],
                                              -1, -1, -1), tf.int32),
        }
        if phrase_spans is not None:
            # The tokenizer's offsets refer to its lower-cased, accent-stripped text, not to
            # the stored caption the phrase spans index: map each token to its word and take
            # the word's offsets in the original caption (_word_offsets).
            word_of_token = self._word_index(tokens).merge_dims(-2, -1)[:, :body]
            word_of_token = frame(word_of_token, -1, -1, -1)  # [B, L]
            out["phrase_token_mask"] = self._phrase_mask(captions, phrase_spans, word_of_token)
        return out

    def lengths(self, captions) -> tuple[list[int], list[int]]:
        """Each caption's words (BERT's basic split, punctuation marks included) and
        WordPieces, untruncated and without [CLS]/[SEP]: what ``max_len`` is measured
        against (``hgan.data.caption_stats``)."""
        if not len(captions):
            return [], []
        tokens = self._tokenizer.tokenize(tf.constant(list(captions), tf.string))
        return (tokens.row_lengths(axis=1).numpy().tolist(),
                tokens.merge_dims(-2, -1).row_lengths().numpy().tolist())

    def id_to_token(self, ids) -> list[str]:
        """Token strings of a sequence of ids (for figures and debugging)."""
        return [self._vocab[i] if 0 <= i < len(self._vocab) else "[UNK]" for i in ids]

    def word_strings(self, captions: tf.Tensor) -> tf.Tensor:
        """In-graph ``caption_words`` of a batch: [B, max_len] strings, slot w holding word
        w's WordPieces joined ("##" dropped), "" past the last word (what an exported
        model's explanation names its word keys with)."""
        out = self(captions)
        ids, index = out["input_word_ids"], out["token_word_index"]
        pieces = tf.strings.regex_replace(tf.gather(tf.constant(self._vocab + ["[UNK]"]),
                                                    tf.minimum(ids, self.vocab_size)), "^##", "")
        slots = self.max_len + 1  # one extra slot per row collects the tokens of no word
        rows = tf.range(tf.shape(ids)[0])[:, None]
        segment = rows * slots + tf.where(index >= 0, index, self.max_len)
        joined = tf.strings.unsorted_segment_join(
            tf.reshape(pieces, [-1]), tf.reshape(segment, [-1]),
            num_segments=tf.shape(ids)[0] * slots)
        return tf.reshape(joined, [-1, slots])[:, :self.max_len]

    def caption_words(self, caption: str) -> list[str]:
        """The words of one caption as the word level sees them (``token_word_index``
        order, punctuation left out, truncated like the tokens): each word's WordPieces
        joined, e.g. ``["a", "man", "in", "a", "t", "-", ...]`` → without the "-"."""
        return self.captions_words([caption])[0]

    def captions_words(self, captions: list[str]) -> list[list[str]]:
        """``caption_words`` of many captions, tokenised in one call (one eager call costs
        about 0.17 s whatever its size: Fig. 4's statistics over a split took 26 s of the
        demo's evaluation one caption at a time)."""
        if not len(captions):
            return []
        out = self(tf.constant(list(captions)))
        all_ids = out["input_word_ids"].numpy()
        all_index = out["token_word_index"].numpy()
        result = []
        for ids, index in zip(all_ids, all_index):
            words = [""] * (int(index.max()) + 1 if index.max() >= 0 else 0)
            for token_id, w in zip(ids, index):
                if w >= 0:
                    piece = self.id_to_token([int(token_id)])[0]
                    words[w] += piece[2:] if piece.startswith("##") else piece
            result.append(words)
        return result

    def _content_word_index(self, tokens: tf.RaggedTensor) -> tf.RaggedTensor:
        """Ragged [B, (tokens)] int64: each token's position among its caption's
        non-punctuation words, -1 for a punctuation token."""
        pieces = tokens.values  # ragged [all words, (pieces)]
        punct = tf.reduce_all(pieces.with_flat_values(
            tf.gather(self._punctuation, pieces.flat_values)), axis=-1)  # [all words]
        keep = tf.cast(~punct, tf.int64)
        # Per caption, the running count of kept words before each word.
        kept = tokens.with_values(keep)  # ragged [B, (words)]
        position = tf.cumsum(kept.to_tensor(), axis=1) - 1
        position = tf.RaggedTensor.from_tensor(position, lengths=kept.row_lengths()).values
        word_value = tf.where(punct, tf.constant(-1, tf.int64), position)  # [all words]
        per_piece = pieces.with_flat_values(tf.gather(word_value, pieces.value_rowids()))
        return tokens.with_values(per_piece).merge_dims(-2, -1)

    @staticmethod
    def _word_index(tokens: tf.RaggedTensor) -> tf.RaggedTensor:
        """Ragged [B, words, pieces] of each token's word position within its caption."""
        global_word = tokens.values.value_rowids()  # per token: word number in the batch
        first_word = tf.gather(tokens.row_starts(), tokens.value_rowids())  # per word
        local = global_word - tf.gather(first_word, global_word)
        return tokens.with_values(tokens.values.with_values(local))

    def _as_tokenized(self, text):
        """The text BertTokenizer splits into words (tf_text's BasicTokenizer): case-folded
        with NFKC, NFD, accents dropped (when lower-casing); control characters spaces."""
        if self.lower_case:
            text = tf_text.normalize_utf8(tf_text.case_fold_utf8(text), "NFD")
            text = tf.strings.regex_replace(text, r"\p{Mn}", "")
        return tf.strings.regex_replace(text, r"\p{Cc}|\p{Cf}", " ")

    def _word_offsets(self, captions):
        """[B, W] start and end byte offsets, in the caption as stored, of the words the
        tokenizer splits its text into. That text can have more or fewer words than the
        caption ("…" is "...", a no-break space a space, a lone accent nothing), so the
        words are found in it, and each of its bytes traced back to the caption character
        it was made from (the text is made character by character)."""
        _, begin, end = tf_text.regex_split_with_offsets(
            self._as_tokenized(captions), _DELIM_PATTERN, _KEEP_DELIM_PATTERN)
        chars, char_start = tf.strings.unicode_split_with_offsets(captions, "UTF-8")
        char_end = (char_start + tf.cast(tf.strings.length(chars), tf.int64)).to_tensor()
        char_start = char_start.to_tensor()  # [B, C]
        made = tf.cast(tf.strings.length(self._as_tokenized(chars)), tf.int64)
        made_end = tf.cumsum(made.to_tensor(), axis=1)  # [B, C] end of each char's text
        last = tf.maximum(tf.shape(made_end)[1] - 1, 0)

        def source(offset):  # the caption character whose text holds byte ``offset``
            return tf.minimum(tf.searchsorted(made_end, offset, side="right"), last)

        begin, end = begin.to_tensor(default_value=0), end.to_tensor(default_value=1)
        return (tf.gather(char_start, source(begin), batch_dims=1),
                tf.gather(char_end, source(end - 1), batch_dims=1))

    def _phrase_mask(self, captions, phrase_spans, word_of_token) -> tf.Tensor:
        w_start, w_end = self._word_offsets(captions)  # [B, W]
        has_word = word_of_token >= 0
        index = tf.maximum(word_of_token, 0)
        tok_start = tf.where(has_word, tf.gather(w_start, index, batch_dims=1), -1)
        tok_end = tf.where(has_word, tf.gather(w_end, index, batch_dims=1), -1)
        if isinstance(phrase_spans, tf.RaggedTensor):
            spans = phrase_spans[:, :self.max_phrases].to_tensor(
                default_value=-1, shape=[None, self.max_phrases, 2])
        else:
            spans = tf.convert_to_tensor(phrase_spans)[:, :self.max_phrases]
        spans = tf.cast(spans, tf.int64)
        p_start, p_end = spans[:, :, 0:1], spans[:, :, 1:2]  # [B, M, 1]
        t_start, t_end = tok_start[:, None, :], tok_end[:, None, :]  # [B, 1, L]
        inside = (t_start >= 0) & (p_start >= 0) & (t_start >= p_start) & (t_end <= p_end)
        return tf.cast(inside, tf.float32)


def _is_punctuation(token: str) -> bool:
    """A vocab entry that BERT's basic tokenizer makes a word of its own: one punctuation
    or symbol character (its ``_is_punctuation``: ASCII non-alphanumerics and Unicode P*)."""
    import unicodedata
    if len(token) != 1:
        return False
    code = ord(token)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(token).startswith("P")
