import random

import numpy as np

from data_prep import demo
from hgan.data.phrase_graph import GraphPhraseChunker
from hgan.data.phrases import extract_noun_phrases
from hgan.tf_compat import tf

CAPTIONS = [
    "a woman in a black baseball cap and a red shoulder bag",
    "The man is wearing a white t-shirt, blue jeans and black shoes. He carries a brown backpack.",
    "A young lady with long blond hair wears a black and white striped dress.",
    "She is walking, holding an umbrella; her sneakers are light grey.",
    "Café owner in a navy blazer — carrying 2 bags.",
    "",
    "...",
]


def _spans(captions):
    return [[[s, e] for _, s, e in extract_noun_phrases(c, tagger="fallback")] for c in captions]


def test_in_graph_chunker_matches_nltk_fallback():
    rng = random.Random(0)
    people = demo.sample_people(30, seed=3)
    captions = CAPTIONS + [demo.caption(p, rng) for p in people]
    got = GraphPhraseChunker()(tf.constant(captions)).to_list()
    assert got == _spans(captions)
    assert len(got[0]) == 3  # a woman / a black baseball cap / a red shoulder bag


def test_in_graph_chunker_inside_tf_function():
    chunker = GraphPhraseChunker()
    fn = tf.function(lambda s: chunker(s).to_tensor(-1),
                     input_signature=[tf.TensorSpec([None], tf.string)])
    out = fn(tf.constant(CAPTIONS[:2])).numpy()
    np.testing.assert_array_equal(out[0][:3], np.array(_spans(CAPTIONS[:1])[0]))
