"""The gallery built by the Beam pipeline (hgan/serving/beam_index.py, hgan-beam-index) is
the gallery ``hgan-search index`` builds: same rows, ids, vectors and top 10, with two
local worker processes; a run stopped half-way is finished by running it again, with
nothing lost and nothing twice; bad files are reported and skipped.

The model is conftest's trained tiny HGAN export, so rankings are not near-ties."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from apache_beam.io.filesystems import FileSystems  # noqa: E402

from hgan.data import records  # noqa: E402
from hgan.serving import ann, beam_index, checksums, gallery, searcher  # noqa: E402
from hgan.tf_compat import tf  # noqa: E402
from tests_support import ROOT  # noqa: E402

TWO_WORKERS = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _photos(tiny_data, folder) -> list[str]:
    """Every image of the tiny data set (all splits) as a file under ``folder``, and the
    captions of its test split."""
    captions = []
    for split in ("train", "val", "test"):
        files = [os.path.join(tiny_data, records.shard_name(split, 0, 1))]
        for ex in tf.data.TFRecordDataset(files).map(records.parse_example):
            path = folder / ex["path"].numpy().decode()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(ex["encoded"].numpy())
            if split == "test":
                captions.extend(c.decode() for c in ex["captions"].numpy())
    return sorted(set(captions))


def _same_gallery(a: str, b: str, atol=1e-6):
    ga, gb = gallery.Gallery.open(a), gallery.Gallery.open(b)
    assert ga.paths() == gb.paths() and len(set(ga.paths())) == len(ga)
    assert ga.features == gb.features and ga.dtype == gb.dtype
    assert ga.manifest["model"] == gb.manifest["model"]
    assert ga.manifest["source"] == gb.manifest["source"]
    for name in ga.features:
        np.testing.assert_allclose(np.asarray(gb.array(name), np.float32),
                                   np.asarray(ga.array(name), np.float32), atol=atol)


@pytest.mark.slow
def test_two_workers_build_the_gallery_index_builds(hgan_export, tiny_data, tmp_path):
    captions = _photos(tiny_data, tmp_path / "photos")
    folder = str(tmp_path / "photos")
    by_index, by_beam = str(tmp_path / "index"), str(tmp_path / "beam")
    searcher.build_index(hgan_export, by_index, images=folder, dtype="float32",
                         ann_threshold=1, log=lambda *_: None)
    lines = []
    report = beam_index.build_index(hgan_export, by_beam, images=folder, dtype="float32",
                                    unit_size=5, ann_threshold=1, beam_args=TWO_WORKERS,
                                    log=lines.append)
    assert (report["images"], report["units"], report["encoded_units"]) == (24, 5, 5)
    assert any("runner FnApiRunner" in ln for ln in lines), lines
    # Two worker processes besides this one, each with TensorFlow set to Keras 2.
    assert len(report["workers"]) == 2 and set(report["workers"].values()) == {"1"}
    assert not any(w.endswith(f":{os.getpid()}") for w in report["workers"])
    _same_gallery(by_index, by_beam)
    # The IVF (above ann_threshold) is trained and filled as index does: ids are rows.
    for path in (by_index, by_beam):
        assert ann.load(os.path.join(path, searcher.ANN_FILE), mmap=False).ntotal == 24
    a, b = searcher.Searcher(hgan_export, by_index), searcher.Searcher(hgan_export, by_beam)
    assert len(captions) >= 4
    for caption in captions:
        top_a, top_b = a.query(caption, top_k=10), b.query(caption, top_k=10)
        assert [(r["path"], r["row"]) for r in top_a] == [(r["path"], r["row"]) for r in top_b]
        np.testing.assert_allclose([r["score"] for r in top_a], [r["score"] for r in top_b],
                                   atol=1e-5)
    assert not os.path.exists(os.path.join(by_beam, ".encoding"))  # the work folder is gone


def test_a_stopped_run_is_finished_by_running_it_again(hgan_export, tiny_data, tmp_path):
    _photos(tiny_data, tmp_path / "photos")
    photos = sorted(str(p.relative_to(tmp_path / "photos"))
                    for p in (tmp_path / "photos").rglob("*.png"))[:11]
    (tmp_path / "photos" / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    listed = tmp_path / "photos" / "list.txt"
    listed.write_text("\n".join(photos[:4] + ["missing.png", "unreadable.png"] + photos[4:10])
                      + "\n")
    reference = str(tmp_path / "reference")
    expected = searcher.build_index(hgan_export, reference, images=str(listed),
                                    log=lambda *_: None)
    out, work = str(tmp_path / "beam"), str(tmp_path / "work")
    # A run stopped half-way: the plan made (units of 3 listed files: 4 units), units 0
    # and 2 encoded, unit 1's shard half written (its temporary file), and unit 0 appended
    # to the gallery when the stop came.
    plan = beam_index.make_plan(hgan_export, out, work, images=str(listed), unit_size=3,
                                log=lambda *_: None)
    assert plan["units"] == 4 and plan["images"] == 12
    beam_index.encode_units(hgan_export, work, [0, 2], beam_index.pipeline_options([]))
    with open(beam_index._shard_file(work, 1) + ".tmp-stopped", "wb") as f:
        f.write(b"PK\x03\x04 half a shard")
    beam_index.assemble(out, work, {**plan, "units": 1}, log=lambda *_: None)
    assert gallery.Gallery.open(out).paths() == photos[:3]
    # The same command again encodes units 1 and 3 only, and appends unit 0 once.
    lines = []
    report = beam_index.build_index(hgan_export, out, images=str(listed), work_dir=work,
                                    unit_size=3, log=lines.append)
    assert (report["units"], report["encoded_units"]) == (4, 2)
    assert any("resuming the plan" in ln for ln in lines), lines
    assert any("2 already encoded, 2 to encode" in ln for ln in lines), lines
    _same_gallery(reference, out, atol=1e-2)  # float16 rows from batches of other sizes
    assert report["images"] == expected["images"] == 10
    # Bad files are reported with their reason, as index reports them, and not fatal.
    assert report["skipped"] == expected["skipped"]
    assert [s["path"] for s in report["skipped"]] == ["missing.png", "unreadable.png"]
    assert "FileNotFoundError" in report["skipped"][0]["reason"]
    assert not FileSystems.exists(work)
    # A grown list is extended: its new image and the two bad files (retried) are planned.
    listed.write_text(listed.read_text() + photos[-1] + "\n")
    report = beam_index.build_index(hgan_export, out, images=str(listed), unit_size=3,
                                    log=lambda *_: None)
    assert (report["units"], report["added"], report["images"]) == (1, 1, 11)
    assert gallery.Gallery.open(out).paths()[-1] == photos[-1]


def test_the_workers_fill_a_quantizer_trained_before_any_shard(hgan_export, tiny_data,
                                                               tmp_path):
    _photos(tiny_data, tmp_path / "photos")
    folder = str(tmp_path / "photos")
    quantizer = str(tmp_path / "quantizer.faiss")
    trained = searcher.train_quantizer(hgan_export, quantizer, images=folder, sample=12,
                                       nlist=2, log=lambda *_: None)
    assert (trained["images"], trained["encoded"], trained["nlist"]) == (24, 12, 2)
    lines, out = [], str(tmp_path / "beam")
    beam_index.build_index(hgan_export, out, images=folder, unit_size=10,
                           quantizer=quantizer, log=lines.append)
    assert any("3 workers' lists joined by FAISS merge_from" in ln for ln in lines), lines
    ivf = ann.load(os.path.join(out, searcher.ANN_FILE), mmap=False)
    q = ann.load(quantizer, mmap=False)
    np.testing.assert_array_equal(ivf.quantizer.reconstruct_n(0, 2),
                                  q.quantizer.reconstruct_n(0, 2))
    with open(os.path.join(out, searcher.ANN_FILE + ".json")) as f:
        meta = json.load(f)
    assert meta == {"trained_on": 24, "nlist": 2, "vectors": 24, "crc32": meta["crc32"]}
    assert meta["crc32"] == checksums.file_crc(os.path.join(out, searcher.ANN_FILE))
    # Every id is its image's gallery row, as index --quantizer makes it.
    by_index = str(tmp_path / "index")
    searcher.build_index(hgan_export, by_index, images=folder, quantizer=quantizer,
                         log=lambda *_: None)
    vectors = gallery.Gallery.open(out).array("global")
    for path in (out, by_index):
        index = ann.load(os.path.join(path, searcher.ANN_FILE), mmap=False)
        got = ann.Searcher(vectors, index, nprobe=2).search(np.asarray(vectors), 24)[1]
        exact = ann.Searcher(vectors).search(np.asarray(vectors), 24)[1]
        np.testing.assert_array_equal(np.sort(got, 1), np.sort(exact, 1))


def test_pipeline_options_default_to_a_local_runner_and_refuse_unknown_ones():
    options = beam_index.pipeline_options([])
    assert options.get_all_options()["runner"] == "FnApiRunner"
    options = beam_index.pipeline_options(["--runner=DataflowRunner", "--project=p",
                                           "--region=europe-west4", "--machine_type=n1-standard-8",
                                           "--temp_location=gs://b/tmp"])
    assert options.get_all_options()["runner"] == "DataflowRunner"
    assert options.get_all_options()["machine_type"] == "n1-standard-8"
    with pytest.raises(ValueError, match="--projct=p"):
        beam_index.pipeline_options(["--projct=p"])


_CLI = textwrap.dedent("""
    import json, sys
    from absl import app, flags
    from hgan.cli import beam_index
    beam_index.define_flags()
    out = []
    for argv, hide_beam in json.loads(sys.argv[1]):
        flags.FLAGS.unparse_flags()
        if hide_beam:  # as if the beam extra were not installed
            import hgan.serving
            sys.modules["apache_beam"] = None
            sys.modules.pop("hgan.serving.beam_index", None)
            vars(hgan.serving).pop("beam_index", None)
        try:
            out.append(beam_index.main(beam_index.parse(["hgan-beam-index"] + argv)))
        except (app.UsageError, SystemExit) as e:
            out.append(str(e))
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_cli_builds_a_gallery_says_what_is_wrong_and_how_to_install_beam(hgan_export,
                                                                          tiny_data, tmp_path):
    _photos(tiny_data, tmp_path / "photos")
    base = [f"--savedmodel={hgan_export}", f"--index={tmp_path / 'g'}"]
    cases = [[base + ["--images=f", "--data_dir=d"], False],
             [base + ["--images=f", "--direct_num_workers=2", "--runer=Dataflow"], False],
             [base + [f"--data_dir={tiny_data}", "--split=val", "--direct_num_workers=1"],
              False],
             [base + ["--images=f"], True]]
    proc = subprocess.run([sys.executable, "-c", _CLI, json.dumps(cases)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")]
    assert line, proc.stderr[-3000:]
    messages = json.loads(line[0][len("RESULT"):])
    assert messages[0] == "hgan-beam-index needs exactly one of --images or --data_dir"
    assert messages[1] == "not an option of this command nor of Beam: --runer=Dataflow"
    assert messages[2] == 0 and "1 units: 0 already encoded, 1 to encode" in proc.stdout
    assert gallery.Gallery.open(str(tmp_path / "g")).manifest["source"] == {
        "kind": "tfrecords", "data_dir": tiny_data, "split": "val"}
    assert len(gallery.Gallery.open(str(tmp_path / "g"))) == 6
    assert messages[3].startswith("error: hgan-beam-index needs Apache Beam") and \
        'pip install -e ".[beam]"' in messages[3]


def test_a_pq_gallery_is_assembled_from_float32_shards_with_codebooks_trained_or_given(
        tmp_path):
    # No model: shards as the workers write them for a coded dtype (float32 rows,
    # _by_unit), appended and coded by the launching process.
    import io
    from apache_beam.ml.inference.base import PredictionResult
    rng = np.random.default_rng(0)
    row = {"global": rng.normal(size=8), "word": rng.normal(size=(3, 16))}
    unit, (_, _, cast) = beam_index._by_unit(((0, 0, "a.png"), PredictionResult(None, row)),
                                             "pq")
    assert unit == 0 and cast["word"].dtype == np.float32
    work = str(tmp_path / "work")
    paths = [[f"u{u}/{i}.png" for i in range(20)] for u in range(2)]
    rows = [{"global": rng.normal(size=(20, 8)).astype(np.float32),
             "word": rng.normal(size=(20, 3, 16)).astype(np.float32)} for _ in range(2)]
    for u in range(2):
        buffer = io.BytesIO()
        meta = {"paths": paths[u], "worker": "w:1", "TF_USE_LEGACY_KERAS": "1", "skipped": []}
        np.savez(buffer, meta=np.array(json.dumps(meta)),
                 **{f"f.{k}": v for k, v in rows[u].items()})
        beam_index._write(beam_index._shard_file(work, u), buffer.getvalue())
    plan = {"model": "m", "dtype": "pq", "source": {}, "units": 2}
    quiet = {"log": lambda *_: None}
    first = str(tmp_path / "first")
    beam_index.assemble(first, work, plan, **quiet)
    store = gallery.Gallery.open(first)
    assert store.dtype == "pq" and len(store) == 40 and list(store.codebooks) == [
        "word", "word.rotation"]
    want = store.codecs["word"].decode(store.codecs["word"].encode(
        np.concatenate([r["word"] for r in rows])))
    np.testing.assert_array_equal(store.array("word")[:], want)
    second = str(tmp_path / "second")
    beam_index.assemble(second, work, plan, codebook=first, **quiet)
    np.testing.assert_array_equal(gallery.Gallery.open(second).records("word"),
                                  store.records("word"))
    # --pq_subdim reaches the codebooks the launching process trains: 16 values a row in
    # codes of 4 (the default would make ceil(16 / 6) = 3 codes of 6, zeros appended).
    third = str(tmp_path / "third")
    beam_index.assemble(third, work, plan, pq_subdim=4, **quiet)
    assert gallery.Gallery.open(third).codebooks["word"].shape[::2] == (4, 4)
    # --nopq_rotation: the rows are coded as they are, with no rotation stored.
    fourth = str(tmp_path / "fourth")
    beam_index.assemble(fourth, work, plan, pq_rotation=False, **quiet)
    plain = gallery.Gallery.open(fourth)
    assert list(plain.codebooks) == ["word"] and plain.codecs["word"].rotation is None
