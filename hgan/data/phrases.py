"""Noun-phrase extraction for the phrase-level branch (HGAN §3.2).

The paper "utilize[s] the NLTK to extract the noun phrase N from a sentence" without saying
how; this module does it the usual NLTK way: tokenise, POS-tag, chunk with a
``nltk.RegexpParser`` grammar. Phrases are returned as UTF-8 **byte** spans of the caption
because that is how ``hgan.data.records`` stores them (so the model can pool the caption's own
BERT token embeddings over a phrase, whatever tokenizer it uses).

Two taggers:

* ``"perceptron"``: NLTK's averaged-perceptron tagger, the default whenever its data
  (``taggers/averaged_perceptron_tagger_eng``) is installed;
* ``"fallback"``: a lexicon of this domain (colours, garments, people, closed-class words)
  backed off to suffix rules. NLTK data cannot be downloaded everywhere (CI has no network),
  and captions of pedestrians, birds and flowers use a small vocabulary, so this is a
  reasonable stand-in rather than a toy.

``resolve_tagger`` turns a request (``"auto"``, or a tagger by name) into the tagger a run
uses: ``"auto"`` picks by what is installed, a named tagger is that tagger or an error, so
``hgan-prep --tagger=...`` writes the same phrases on every machine or fails.
"""
from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import nltk

# nltk is imported where a tagger or chunker is built: importing it takes seconds, and
# every command that only reads the lexicon (serving, evaluation) would pay for it.

# A word is letters/digits with inner hyphens or apostrophes ("t-shirt", "woman's");
# every other non-space character is a token of its own (punctuation, symbols, emoji).
TOKEN_RE = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")

# Determiner-led phrases may contain participles ("a walking man", "the striped shirt");
# bare phrases may not start with a gerund, or "wearing shorts" would become a phrase.
# "(<JJ.*|VBN><CC>)?" keeps coordinated colours together: "a black and white jacket".
GRAMMAR = r"""
NP: {<DT|PRP\$>(<JJ.*|VBN><CC>)?<JJ.*|CD|VBN|VBG>*<NN.*>+}
    {(<JJ.*|VBN><CC>)?<JJ.*|CD|VBN>*<NN.*>+}
"""

TAGGERS = ("perceptron", "fallback")
TAGGER_REQUESTS = ("auto",) + TAGGERS  # what resolve_tagger (and data_prep --tagger) takes
PERCEPTRON_DATA = "taggers/averaged_perceptron_tagger_eng"


def _tags(tag: str, words: str) -> dict[str, str]:
    return {word: tag for word in words.split()}


# Lower-case lexicon of the fallback tagger. Later entries win, so closed-class words (which
# are never anything else here) come last.
LEXICON = {
    **_tags("JJ", """
        black white red blue green yellow orange purple pink brown grey gray beige navy khaki
        maroon teal turquoise violet silver golden gold cream tan olive burgundy colorful
        colourful light dark bright pale deep long short small large big little tiny young
        old tall thin slim heavy fat left right loose tight casual formal plaid plain solid
        blond blonde bald curly straight wavy shiny round pointed high low middle-aged
        elderly multicolored multicoloured full half sleeveless bare open"""),
    **_tags("NN", """
        shirt t-shirt tshirt tee top blouse sweater sweatshirt hoodie jacket coat vest
        cardigan blazer suit uniform dress skirt belt tie scarf cap hat helmet hood beanie
        backpack bag handbag purse wallet umbrella bottle phone cellphone watch bracelet
        necklace ring earring mask hair ponytail bun beard mustache moustache sleeve collar
        logo pattern print stripe design jean denim leather cotton plastic paper box basket
        stroller bicycle bike scooter car man woman girl boy person lady gentleman guy child
        kid baby pedestrian adult student head face hand arm shoulder back leg foot waist
        neck chest wrist side front picture image photo camera clothing outfit footwear heel
        pair bird flower petal wing beak tail crown breast belly throat eye feather
        stamen pistil center centre stem leaf bill nape rump eyebrow"""),
    **_tags("NNS", """
        pants trousers jeans shorts leggings tights shoes sneakers trainers boots sandals
        slippers heels flats loafers socks stockings glasses sunglasses spectacles earrings
        sleeves gloves clothes men women people children kids hands arms shoulders legs feet
        stripes dots flowers petals wings feathers leaves eyes"""),
    **_tags("DT", "a an the this that these those some any no each every another both all"),
    **_tags("PRP$", "his her their its my your our"),
    **_tags("PRP", "he she they it him them i you we"),
    **_tags("WP", "who what which"),
    **_tags("IN", """
        in on with of at over under around across by from into onto near behind beside
        below above between through like while as without about for than along upon"""),
    **_tags("TO", "to"),
    **_tags("CC", "and or but nor plus"),
    **_tags("RB", "also very slightly not too quite rather just only mostly partly"),
    **_tags("VBZ", """
        is has wears carries holds walks looks appears seems goes stands pushes pulls
        rides uses sports"""),
    **_tags("VBP", "are have wear carry hold walk look appear seem go stand"),
    **_tags("VB", "be"),
    **_tags("VBD", "was were had wore carried held walked"),
    **_tags("VBG", """
        wearing carrying holding walking having looking standing pushing pulling riding
        using sporting going"""),
}

# Backoff for words outside the lexicon; the first pattern that matches wins.
SUFFIX_RULES = [
    (r"^[^\w\s]+$", "."),
    (r"^-?\d+(?:[.,]\d+)?$", "CD"),
    (r".*(?:ish|ous|ful|less)$", "JJ"),
    (r".*ing$", "VBG"),
    (r".*ed$", "VBN"),
    (r".*ly$", "RB"),
    (r".*ss$", "NN"),
    (r".*s$", "NNS"),
    (r".*", "NN"),
]


@functools.lru_cache(maxsize=None)
def _perceptron() -> nltk.tag.PerceptronTagger | None:
    """NLTK's averaged-perceptron tagger, or None when its data is not installed."""
    import nltk
    try:
        return nltk.tag.PerceptronTagger()
    except LookupError:
        return None


@functools.lru_cache(maxsize=None)
def _fallback() -> nltk.tag.SequentialBackoffTagger:
    import nltk
    return nltk.UnigramTagger(model=LEXICON, backoff=nltk.RegexpTagger(SUFFIX_RULES))


@functools.lru_cache(maxsize=None)
def _chunker() -> nltk.RegexpParser:
    import nltk
    return nltk.RegexpParser(GRAMMAR)


def tagger_name() -> str:
    """The tagger used by default: "perceptron" when its NLTK data is installed, else "fallback"."""
    return "perceptron" if _perceptron() is not None else "fallback"


def resolve_tagger(requested: str = "auto") -> str:
    """The tagger a request means: "auto" → ``tagger_name()`` (by what is installed);
    "perceptron" / "fallback" → that tagger, whatever else is installed.

    Raises:
      LookupError: "perceptron" was asked for and its NLTK data is not installed.
      ValueError: an unknown request.
    """
    if requested == "auto":
        return tagger_name()
    if requested not in TAGGERS:
        raise ValueError(f"unknown tagger {requested!r}; expected one of {TAGGER_REQUESTS}")
    if requested == "perceptron" and _perceptron() is None:
        import nltk
        raise LookupError(
            f"tagger 'perceptron' was requested but NLTK data '{PERCEPTRON_DATA}' is not "
            f"installed (searched {list(nltk.data.path)}): install it (python -m "
            "nltk.downloader averaged_perceptron_tagger_eng, or set NLTK_DATA to a folder "
            "holding it), or request tagger 'fallback' (or 'auto')")
    return requested


def _pos_tags(words: list[str], tagger: str) -> list[str]:
    if tagger == "perceptron":
        model = _perceptron()
        if model is None:
            raise LookupError("NLTK data 'averaged_perceptron_tagger_eng' is not installed")
        # The perceptron uses capitalisation as a feature, so it sees the words unchanged.
        return [tag for _, tag in model.tag(words)]
    if tagger == "fallback":
        return [tag for _, tag in _fallback().tag([w.lower() for w in words])]
    raise ValueError(f"unknown tagger {tagger!r}; expected one of {TAGGERS}")


def extract_noun_phrases(caption: str, tagger: str | None = None) -> list[tuple[str, int, int]]:
    """Noun phrases of a caption, in order, as ``(text, start, end)`` UTF-8 byte spans.

    ``caption.encode()[start:end].decode() == text``; ``end`` is exclusive. The text is the
    caption's own substring, so spacing inside a phrase is preserved.

    Args:
      caption: one caption.
      tagger: "perceptron", "fallback", or None for ``tagger_name()``.
    """
    tagger = tagger or tagger_name()
    matches = list(TOKEN_RE.finditer(caption))
    if not matches:
        return []
    tags = _pos_tags([m.group() for m in matches], tagger)
    # Chunk over token indices so each chunk maps back to character offsets.
    tree = _chunker().parse(list(zip(range(len(matches)), tags)))
    byte_offset = _byte_offsets(caption)
    phrases = []
    for subtree in tree.subtrees(lambda t: t.label() == "NP"):
        first, last = subtree.leaves()[0][0], subtree.leaves()[-1][0]
        start, end = matches[first].start(), matches[last].end()
        phrases.append((caption[start:end], byte_offset[start], byte_offset[end]))
    return phrases


def _byte_offsets(text: str) -> list[int]:
    """``offsets[i]`` is the UTF-8 byte offset of character i (``len(text) + 1`` entries)."""
    offsets = [0]
    for char in text:
        offsets.append(offsets[-1] + len(char.encode("utf-8")))
    return offsets
