"""Shard writer (data_prep/writer.py): round trip, determinism, atomicity, strict mode."""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

from data_prep import demo, importers, writer
from hgan.data import phrases
from hgan.data import records
from hgan.tf_compat import tf
from tests_support import make_pedes, write_wordpiece_vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The demo set (3/1/1 identities x 2 shots) plus a few records the writer must handle."""
    root = tmp_path_factory.mktemp("demo")
    demo.generate(str(root), identities=5, shots=2, seed=1)
    path = root / "reid_raw.json"
    entries = json.loads(path.read_text())
    shutil.copy(root / "imgs" / "demo" / "0001_0.jpg", root / "imgs" / "demo" / "0010_0.jpg")
    entries += [
        # Identity "10" sorts before "2" as a string: labels follow string order.
        {**entries[0], "id": 10, "file_path": "demo/0010_0.jpg",
         "captions": ["Une femme en café-coloured coat 👜.", " "]},
        {**entries[1], "file_path": "demo/missing.jpg"},
        {**entries[2]},  # duplicate of demo/0002_0.jpg
    ]
    path.write_text(json.dumps(entries))
    return str(root)


def write(data_dir, out, images_per_shard=2):
    return writer.write_dataset("demo", data_dir, str(out), images_per_shard=images_per_shard,
                                log=lambda message: None)


def read_split(out, split):
    files = sorted(glob.glob(records.shard_pattern(str(out), split)))
    dataset = tf.data.TFRecordDataset(files).map(records.parse_example)
    return list(dataset.as_numpy_iterator())


def test_round_trip_through_parse_example(data_dir, tmp_path):
    manifest = write(data_dir, tmp_path)
    expected = {r.path: r for r in importers.iter_records("demo", data_dir)
                if isinstance(r, importers.Record)}

    assert manifest["phrase_tagger"] == phrases.tagger_name()
    assert manifest["phrase_tagger_requested"] == "auto"
    assert manifest["schema_version"] == records.SCHEMA_VERSION
    assert [(s["reason"], s["path"]) for s in manifest["skipped"]] == [
        (importers.MISSING_IMAGE, "demo/missing.jpg"), (importers.DUPLICATE, "demo/0002_0.jpg")]
    assert manifest["label_maps"]["train"] == {"0": "1", "1": "10", "2": "2", "3": "3"}
    seen = 0
    for split, info in manifest["splits"].items():
        examples = read_split(tmp_path, split)
        assert sorted(glob.glob(records.shard_pattern(str(tmp_path), split))) == [
            str(tmp_path / name) for name in info["shards"]]
        assert len(examples) == info["images"]
        assert sum(len(e["captions"]) for e in examples) == info["captions"]
        assert len({e["label"] for e in examples}) == info["identities"]
        for example in examples:
            record = expected[example["path"].decode()]
            assert record.split == split
            identity = example["identity"].decode()
            assert identity == record.identity
            assert manifest["label_maps"][split][str(example["label"])] == identity
            assert tuple(c.decode() for c in example["captions"]) == record.captions
            assert tf.io.decode_jpeg(example["encoded"]).shape == (demo.HEIGHT, demo.WIDTH, 3)
            _check_phrases(example)
            seen += 1
    assert seen == len(expected) == 11
    assert len(manifest["splits"]["train"]["shards"]) == 4  # 7 images, 2 per shard


def _check_phrases(example):
    """Spans point at the phrase text inside their caption, as extract_noun_phrases said."""
    for caption, spans, texts in zip(example["captions"], example["phrase_spans"],
                                     example["phrases"]):
        assert [(t.decode(), s, e) for t, (s, e) in zip(texts, spans)] == \
            phrases.extract_noun_phrases(caption.decode())
        assert all(caption[s:e] == t for t, (s, e) in zip(texts, spans))
        assert len(texts) >= 1


def test_reruns_are_byte_identical_and_remove_stale_shards(data_dir, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write(data_dir, first, images_per_shard=1)
    stale = set(os.listdir(first))
    write(data_dir, first)  # other shard counts, into the same folder
    write(data_dir, second)
    files = sorted(os.listdir(first))
    assert files == sorted(os.listdir(second))
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    manifest = json.loads((first / writer.MANIFEST).read_text())
    listed = {n for info in manifest["splits"].values() for n in info["shards"]}
    assert set(files) == listed | {writer.MANIFEST, "word_vocab.txt"}
    assert stale - set(files)  # the one-image shards were there and are gone


def test_interrupted_run_leaves_no_manifest_and_no_partial_shard(data_dir, tmp_path,
                                                                   monkeypatch):
    write(data_dir, tmp_path, images_per_shard=3)
    calls = []
    real_serialize = writer._serialize

    def failing_serialize(*args):
        calls.append(1)
        if len(calls) == 5:  # train shards hold 1, 2, 2, 2 images: this is in the third
            raise KeyboardInterrupt
        return real_serialize(*args)

    monkeypatch.setattr(writer, "_serialize", failing_serialize)
    with pytest.raises(KeyboardInterrupt):
        write(data_dir, tmp_path, images_per_shard=2)

    assert not (tmp_path / writer.MANIFEST).exists()
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []
    shards = glob.glob(records.shard_pattern(str(tmp_path), "*"))
    assert os.path.join(tmp_path, records.shard_name("train", 1, 4)) in shards
    assert os.path.join(tmp_path, records.shard_name("train", 2, 4)) not in shards
    for shard in shards:  # every file that looks like a shard reads to its end
        assert sum(1 for _ in tf.data.TFRecordDataset(shard)) > 0


@pytest.mark.slow
def test_strict_cli_exits_non_zero_after_writing_the_report(data_dir, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "--dataset=demo", f"--data_dir={data_dir}",
         f"--output_dir={tmp_path}", "--strict", "--images_per_shard=100", "--tagger=fallback",
         "--bert=none"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    manifest = json.loads((tmp_path / writer.MANIFEST).read_text())
    assert len(manifest["skipped"]) == 2
    assert (manifest["phrase_tagger"], manifest["phrase_tagger_requested"]) == (
        "fallback", "fallback")
    assert f"1  {importers.MISSING_IMAGE}" in result.stdout
    assert f"1  {importers.DUPLICATE}" in result.stdout
    assert "records read" in result.stdout


class _AllNouns:
    """A "perceptron" that tags every token NN: its phrases differ from the fallback's."""

    def tag(self, words):
        return [(word, "NN") for word in words]


def _shard_phrases(out):
    return [[[t.decode() for t in texts] for texts in example["phrases"]]
            for split in ("train", "val", "test") for example in read_split(out, split)]


def _expected_phrases(out, tagger):
    return [[[text for text, _, _ in phrases.extract_noun_phrases(c.decode(), tagger)]
             for c in example["captions"]]
            for split in ("train", "val", "test") for example in read_split(out, split)]


def test_the_requested_tagger_writes_the_phrases_and_is_recorded(data_dir, tmp_path,
                                                                 monkeypatch):
    # A perceptron "installed": auto takes it; a request for the fallback does not.
    monkeypatch.setattr(phrases, "_perceptron", _AllNouns)
    pinned = writer.write_dataset("demo", data_dir, str(tmp_path / "fallback"),
                                  log=lambda message: None, tagger="fallback")
    auto = writer.write_dataset("demo", data_dir, str(tmp_path / "auto"),
                                log=lambda message: None, tagger="auto")
    assert (pinned["phrase_tagger"], pinned["phrase_tagger_requested"]) == (
        "fallback", "fallback")
    assert (auto["phrase_tagger"], auto["phrase_tagger_requested"]) == ("perceptron", "auto")
    on_disk = json.loads((tmp_path / "auto" / writer.MANIFEST).read_text())
    assert on_disk["phrase_tagger"] == "perceptron"
    fallback_phrases = _shard_phrases(tmp_path / "fallback")
    assert fallback_phrases == _expected_phrases(tmp_path / "fallback", "fallback")
    assert _shard_phrases(tmp_path / "auto") == _expected_phrases(tmp_path / "auto",
                                                                  "perceptron")
    assert _shard_phrases(tmp_path / "auto") != fallback_phrases  # the taggers differ here


def test_a_missing_tagger_fails_before_the_output_is_touched(data_dir, tmp_path,
                                                             monkeypatch):
    write(data_dir, tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    monkeypatch.setattr(phrases, "_perceptron", lambda: None)
    with pytest.raises(LookupError, match="averaged_perceptron_tagger_eng"):
        writer.write_dataset("demo", data_dir, str(tmp_path), log=lambda message: None,
                             tagger="perceptron")
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


@pytest.mark.skipif(phrases._perceptron() is not None,
                    reason="NLTK's perceptron data is installed: nothing to fail on")
@pytest.mark.slow
def test_cli_refuses_a_tagger_that_is_not_installed(data_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "--dataset=demo", f"--data_dir={data_dir}",
         f"--output_dir={out}", "--tagger=perceptron"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "--tagger=perceptron" in result.stderr
    assert "averaged_perceptron_tagger_eng" in result.stderr
    assert not out.exists()  # nothing read, nothing written


@pytest.mark.skipif(phrases._perceptron() is None,
                    reason="NLTK data 'averaged_perceptron_tagger_eng' is not installed "
                           "(nltk.download needs the network)")
def test_the_installed_perceptron_writes_its_phrases(data_dir, tmp_path):
    manifest = writer.write_dataset("demo", data_dir, str(tmp_path), log=lambda m: None,
                                    tagger="perceptron")
    assert manifest["phrase_tagger"] == "perceptron"
    assert _shard_phrases(tmp_path) == _expected_phrases(tmp_path, "perceptron")


def test_official_split_sizes_are_checked_and_a_mismatch_said_clearly(data_dir, tmp_path):
    official = {s: dict(v) for s, v in importers.EXPECTED_SIZES["cuhk_pedes"].items()}
    assert importers.size_differences("cuhk_pedes", official) == []
    assert importers.size_differences("demo", {}) == []  # no published sizes: no check
    off = {**official, "test": {**official["test"], "images": 3073}}
    del off["val"]
    assert importers.size_differences("cuhk_pedes", off) == [
        "val: missing (the official split has 1,000 identities, 3,078 images, 6,158 captions)",
        "test: 3,073 images, the official split has 3,074"]
    # The demo set read as CUHK-PEDES (same layout): the import says it is not the
    # official split, how, and that some records name images the folder does not have.
    lines = []
    manifest = writer.write_dataset("cuhk_pedes", data_dir, str(tmp_path / "out"),
                                    log=lines.append)
    check = manifest["official_sizes"]
    assert not check["matches"] and "train: 4 identities, the official split has 11,003" \
        in check["differences"]
    text = "\n".join(lines)
    assert "WARNING: this is not the official cuhk_pedes split" in text
    assert "1 records name an image that is not in the image folder" in text
    demo_manifest = write(data_dir, tmp_path / "demo")
    assert "official_sizes" not in demo_manifest


def test_the_word_vocabulary_comes_from_the_training_captions_only(data_dir, tmp_path):
    from hgan.data import word_vocab
    out = tmp_path / "out"
    manifest = write(data_dir, out)
    vocab = (out / word_vocab.FILE).read_text().split("\n")[:-1]
    assert manifest["word_vocab"] == {
        "file": word_vocab.FILE, "tokens": len(vocab),
        "sha256": hashlib.sha256((out / word_vocab.FILE).read_bytes()).hexdigest()}
    train = [c for e in read_split(out, "train") for c in e["captions"]]
    expected = word_vocab.build([c.decode() for c in train])
    assert vocab == expected


def test_the_manifest_gives_caption_lengths_and_what_the_presets_caps_cut(tmp_path):
    """Four captions whose lengths are counted here by hand: WordPieces (with a vocab in
    which "wearing" is "wear" "##ing"), words (the period is one) and noun phrases."""
    long_caption = " ".join(["a red coat"] * 13) + "."  # 40 words and WordPieces, 13 phrases
    texts = {1: ["a man in a red coat.",  # 7, 7, 2: a man / a red coat
                 "a man wearing black shoes and a red coat with a bag."],  # 14, 13, 4
             2: [long_caption, "a woman in a red coat."]}  # 40, 40, 13; 7, 7, 2
    make_pedes(tmp_path / "raw", layout="demo", identities={"train": 2}, shots=1,
               captions=lambda split, pid, shot: texts[pid])
    vocab = write_wordpiece_vocab(tmp_path / "vocab.txt")
    lines = []
    manifest = writer.write_dataset("demo", str(tmp_path / "raw"), str(tmp_path / "out"),
                                    log=lines.append, tagger="fallback", vocab_file=vocab)
    lengths = manifest["caption_lengths"]
    on_disk = json.loads((tmp_path / "out" / writer.MANIFEST).read_text())
    assert on_disk["caption_lengths"] == lengths
    assert lengths["lower_case"] is True
    assert lengths["wordpiece_vocab"] == {"source": vocab, "tokens": 19, "sha256": hashlib.sha256(
        open(vocab, "rb").read()).hexdigest()}
    assert lengths["word_vocab_sha256"] == manifest["word_vocab"]["sha256"] == hashlib.sha256(
        (tmp_path / "out" / "word_vocab.txt").read_bytes()).hexdigest()
    train = lengths["splits"]["train"]
    assert train["captions"] == 4
    assert train["wordpieces"] == {"counts": {"7": 2, "14": 1, "40": 1}, "percentiles": {
        "50": 7, "90": 40, "99": 40, "99.9": 40, "max": 40}, "mean": 17.0}
    assert train["words"] == {"counts": {"7": 2, "13": 1, "40": 1}, "percentiles": {
        "50": 7, "90": 40, "99": 40, "99.9": 40, "max": 40}, "mean": 16.75}
    assert train["phrases"] == {"counts": {"2": 2, "4": 1, "13": 1}, "percentiles": {
        "50": 2, "90": 13, "99": 13, "99.9": 13, "max": 13}, "mean": 5.25}
    presets = train["cut_by_presets"]
    # paper: 62 tokens and 8 phrases; demo: 38 tokens and 6 phrases.
    assert {name: (cut["tokens"]["cut"], cut.get("phrases", {}).get("cut"))
            for name, cut in presets.items()} == {
        "paper/hgan": (0, 1), "paper/iatv": (0, None), "demo/hgan": (1, 1),
        "demo/iatv": (1, None)}
    text = "\n".join(lines)
    assert f"  WordPieces ({vocab}): p50 7  p90 40  p99 40  p99.9 40  max 40  mean 17.0" in text
    assert "    0-5: 0 | 6-11: 2 | 12-17: 1 | 18-23: 0 | 24-29: 0 | 30-35: 0 | 36-41: 1" in text
    assert ("  paper/hgan caps would cut 0 (0.000 %) over 62 WordPieces, 1 (25.000 %) over "
            "8 noun phrases") in text
    assert "  paper/iatv caps would cut 0 (0.000 %) over 62 words" in text


@pytest.mark.slow
def test_cli_refuses_a_vocabulary_it_cannot_read_before_writing(data_dir, tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "data_prep", "--dataset=demo", f"--data_dir={data_dir}",
         f"--output_dir={out}", f"--vocab_file={tmp_path / 'no_vocab.txt'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert f"--vocab_file={tmp_path / 'no_vocab.txt'}: cannot read its WordPiece " \
        "vocabulary" in result.stderr
    assert "--bert=none to count words only" in result.stderr
    assert not out.exists()


def test_the_cli_default_shard_size_is_the_writers():
    import data_prep.__main__ as cli
    assert cli.DEFAULT_IMAGES_PER_SHARD == writer.DEFAULT_IMAGES_PER_SHARD
