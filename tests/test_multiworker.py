"""Two MultiWorkerMirroredStrategy workers on localhost train a few steps together."""
import json
import os
import socket
import subprocess
import sys

import pytest

from tests_support import ROOT

pytestmark = pytest.mark.slow


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_workers_train_and_the_chief_keeps_the_checkpoints(tiny_data, tiny_vocab, tmp_path):
    model_dir = str(tmp_path / "run")
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    args = [sys.executable, "train.py", "--config=tiny", f"--data_dir={tiny_data}",
            f"--model_dir={model_dir}", "--set=bert=scratch:2x16", "--set=bert_layers=last",
            f"--set=vocab_file={tiny_vocab}", "--set=batch_size=4",
            "--set=identities_per_batch=2", "--set=checkpoint_every=2", "--max_steps=3",
            "--val_split=none"]
    procs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    for code, out, err in outputs:
        assert code == 0, err[-3000:]
        assert "trained to step 3" in out
    ckpts = sorted(f for f in os.listdir(os.path.join(model_dir, "ckpt")) if f.endswith(".index"))
    assert ckpts == ["ckpt-2.index", "ckpt-3.index"]
    assert not [d for d in os.listdir(model_dir) if d.endswith("_scratch")]
