"""Shared fixtures: a tiny TFRecord dataset and vocab written straight through the schema,
and the trained tiny runs (HGAN, its export, IATV) that many tests read.

The data do not go through ``data_prep`` on purpose: model and pipeline tests should not
break when an importer changes, and importer tests build their own raw-layout fixtures.

Every session fixture here is built once per test run, whichever xdist worker asks first
(``build_once``: the others wait on its lock and read the result), never once per worker.
The tests only read them; a test that changes a run copies it first.
"""
import io
import json
import os
import shutil

import numpy as np
import pytest
from filelock import FileLock

from hgan.config import preset
from hgan.data import records
from hgan.tf_compat import tf

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
GARMENTS = ["shirt", "jacket", "coat"]
WORDS = ["a", "man", "woman", "in", "with", "and", "wearing", "bag", "pants", "shoes", "."]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tiny_config(vocab: str):
    """The ``tiny`` preset at the tiny dataset's image size, over ``vocab``."""
    return preset("tiny").replace(vocab_file=vocab, image_height=32, image_width=16)


def write_vocab(path: str) -> str:
    with open(path, "w") as f:
        f.write("\n".join(SPECIAL + COLOURS + GARMENTS + WORDS) + "\n")
    return path


def _phrase(caption: str, text: str):
    start = caption.encode().index(text.encode())
    return (text, start, start + len(text.encode()))


def _png(colour_index: int, shade: int, size=(24, 12)) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(colour_index * 10 + shade)
    base = np.zeros((*size, 3), np.uint8)
    base[: size[0] // 2, :, colour_index % 3] = 200  # "upper garment" colour per identity
    base[size[0] // 2:, :, (colour_index + 1) % 3] = 120 + 20 * shade
    base = np.clip(base + rng.integers(0, 20, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, format="PNG")
    return buf.getvalue()


def write_tiny_dataset(root: str, identities: dict | None = None, shots: int = 2,
                       vocab_file: str = "") -> str:
    """Writes ``{split}-00000-of-00001.tfrecord`` + manifest for train/val/test; the
    manifest's caption lengths are counted in ``vocab_file``'s WordPieces (words only
    without one), as hgan-prep counts them."""
    from hgan.data import caption_stats
    identities = identities or {"train": 6, "val": 3, "test": 3}
    os.makedirs(root, exist_ok=True)
    manifest = {"schema_version": records.SCHEMA_VERSION, "dataset": "tiny", "splits": {},
                "skipped": []}
    lengths = {}
    offset = 0
    for split, count in identities.items():
        name = records.shard_name(split, 0, 1)
        n_images = n_captions = 0
        captions, phrase_counts = [], []
        with tf.io.TFRecordWriter(os.path.join(root, name)) as w:
            for label in range(count):
                colour = COLOURS[(label + offset) % len(COLOURS)]
                garment = GARMENTS[(label + offset) % len(GARMENTS)]
                for shot in range(shots):
                    c1 = f"a man in a {colour} {garment} with a bag."
                    c2 = f"a man wearing {colour} {garment} and pants."
                    phrases = [[_phrase(c1, f"a {colour} {garment}"), _phrase(c1, "a bag")],
                               [_phrase(c2, f"{colour} {garment}"), _phrase(c2, "pants")]]
                    ex = records.make_example(_png(label + offset, shot), f"{split}/{label}_{shot}.png",
                                              label, str(label + offset), [c1, c2], phrases)
                    w.write(ex.SerializeToString())
                    n_images += 1
                    n_captions += 2
                    captions += [c1, c2]
                    phrase_counts += [len(p) for p in phrases]
        manifest["splits"][split] = {"images": n_images, "captions": n_captions,
                                     "identities": count, "shards": [name]}
        lengths[split] = {**caption_stats.count(captions, vocab_file), "phrases": phrase_counts}
        offset += count
    manifest["caption_lengths"] = caption_stats.summarize(
        lengths, caption_stats.fingerprint(vocab_file) if vocab_file else None, "")
    with open(os.path.join(root, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return root


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory, request):
    """A folder every xdist worker of this test run sees: the parent of their basetemps
    (the basetemp itself without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if hasattr(request.config, "workerinput") else base


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(shared_root):
    """The local heads' C kernel is kept in this test run's folder, not the user's cache
    (``local_head_kernel.cache_dir``): the run's workers and subprocesses build it once."""
    from hgan.evaluation import local_head_kernel
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(local_head_kernel.CACHE_ENV, str(shared_root / "kernels"))
        yield


def build_once(root, name: str, build):
    """``root/name``, made by ``build(path)`` the first time any worker asks for it in this
    test run; a worker that asks meanwhile waits for it. A half-built folder (a worker
    killed mid-way) is built again."""
    target = root / name
    with FileLock(str(target) + ".lock"):
        if not (root / f"{name}.done").exists():
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            build(str(target))
            (root / f"{name}.done").touch()
    return str(target)


@pytest.fixture(scope="session")
def tiny_vocab(shared_root):
    return build_once(shared_root, "vocab.txt", write_vocab)


@pytest.fixture(scope="session")
def tiny_data(shared_root, tiny_vocab):
    return build_once(shared_root, "tiny_data",
                      lambda root: write_tiny_dataset(root, vocab_file=tiny_vocab))


@pytest.fixture(scope="session")
def hgan_run(shared_root, tiny_data, tiny_vocab):
    """A tiny HGAN trained 60 steps at lr 3e-3 (seeded): the test split's captions find
    their own identity first for 10 of 12 (2 steps stayed at chance), so the page's test
    can ask for it. No model selection: nothing reading it needs one, and each val pass
    traces the encoders and heads; "best" falls back to the last checkpoint."""
    def build(model_dir):
        from hgan import families
        from hgan.training import run_dir
        config = preset("tiny").replace(
            vocab_file=tiny_vocab, image_height=32, image_width=16, bert="scratch:2x16",
            bert_layers="last", batch_size=4, identities_per_batch=2, max_steps=60,
            checkpoint_every=60, learning_rate=3e-3)
        run_dir.reconcile_config(config, model_dir)
        families.train(config, tiny_data, model_dir, val_split="none", log=lambda _: None)
    return build_once(shared_root, "hgan_run", build)


@pytest.fixture(scope="session")
def hgan_export(shared_root, hgan_run):
    """``hgan_run`` exported as hgan-export does, alone in its folder."""
    def build(folder):
        from hgan.families import export
        os.makedirs(folder)
        export(hgan_run, os.path.join(folder, "saved"))
    return os.path.join(build_once(shared_root, "hgan_export", build), "saved")


IATV_STEPS = (2, 2, 2)  # steps per phase: stage 1 ends at 2, the text phase at 4


def iatv_config(tiny_vocab):
    """The tiny IATV of the tests: three phases of ``IATV_STEPS`` steps, stopped at 3."""
    stage1, text, joint = IATV_STEPS
    return preset("tiny").replace(
        family="iatv", vocab_file=tiny_vocab, image_height=32, image_width=16,
        backbone="small_cnn", fc_units=16, embed_dim=16, word_dim=8,
        lstm_units=8, attention_dim=8, importance_hidden=8,
        fc_hidden=8, decoder_steps=2, candidates=3, rerank_k=3, batch_size=4,
        stage1_steps=stage1, stage2_text_steps=text, stage2_joint_steps=joint,
        checkpoint_every=2, keep_checkpoints=10, max_steps=3)


@pytest.fixture(scope="session")
def iatv_run(shared_root, tiny_data, tiny_vocab):
    """A tiny IATV run stopped in the text phase (step 3), then resumed to the end (step
    6) → (model_dir, first summary, second summary, the log lines of both). The first run
    skips validation (no such split), which only costs time here."""
    def build(folder):
        from hgan import families
        from hgan.training import run_dir
        config, model_dir, lines = iatv_config(tiny_vocab), os.path.join(folder, "run"), []
        run_dir.reconcile_config(config, model_dir)
        first = families.train(config, tiny_data, model_dir, val_split="none",
                               log=lines.append)
        more = config.replace(max_steps=0)
        run_dir.reconcile_config(more, model_dir)
        second = families.train(more, tiny_data, model_dir, log=lines.append)
        with open(os.path.join(folder, "result.json"), "w") as f:
            json.dump({"first": first, "second": second, "lines": lines}, f, default=str)
    folder = build_once(shared_root, "iatv_run", build)
    with open(os.path.join(folder, "result.json")) as f:
        result = json.load(f)
    return os.path.join(folder, "run"), result["first"], result["second"], result["lines"]


@pytest.fixture()
def tiny_config(tiny_vocab):
    return make_tiny_config(tiny_vocab)


@pytest.fixture(scope="session")
def two_replica_results(shared_root, tiny_data, tiny_vocab):
    """Every one-replica-against-two check (``tests/two_replicas.py``), computed once per
    test run in one process of its own → {check: its figures}."""
    import subprocess
    import sys

    def build(path):
        config_path = path + ".config.json"
        with open(config_path, "w") as f:
            f.write(make_tiny_config(tiny_vocab).to_json())
        script = os.path.join(os.path.dirname(__file__), "two_replicas.py")
        proc = subprocess.run([sys.executable, script, config_path, tiny_data, path],
                              capture_output=True, text=True, timeout=900,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if proc.returncode:
            raise AssertionError(f"tests/two_replicas.py exited {proc.returncode}:\n"
                                 f"{proc.stderr[-4000:]}")

    with open(build_once(shared_root, "two_replicas.json", build)) as f:
        return json.load(f)
