"""Two-stage fidelity of OPQ re-rank tables on a test split: ``bench/search_latency.py
--fidelity`` with the ``pq`` codec's codebook training and coding replaced by FAISS's
``OPQMatrix`` (a learnt rotation of each padded row) followed by the same product
quantiser; decoding undoes the rotation. Not a stored form of the package: the rotation is
held in this process beside each codebook (what docs/serving.md's OPQ rows measured).

  python bench/opq_fidelity.py --savedmodel=SAVEDMODEL --data_dir=TFRECORDS \\
      --fidelity=float32,pq:8,pq:6 [--dir=/tmp/search_bench]

Prints ``search_latency``'s fidelity lines (a ``pq`` line is OPQ here). Nothing asserted.
"""
import numpy as np
from absl import app, flags

import search_latency
from hgan.serving import codec

FLAGS = flags.FLAGS
ROTATIONS = {}  # codebook bytes -> (rotation [D', D'], row width C')
_train, _PQRows = codec.train_codebook, codec.PQRows


def train_codebook(rows, dim, seed=0, subdim=None, **kw):
    import faiss
    m, s = codec.sub_width(dim, subdim)
    x = codec._padded(np.asarray(rows, np.float32).reshape(-1, dim), m * s)
    if len(x) > codec.PQ_TRAIN_ROWS:
        x = x[np.sort(np.random.default_rng(seed).choice(len(x), codec.PQ_TRAIN_ROWS,
                                                         replace=False))]
    opq = faiss.OPQMatrix(m * s, m)
    opq.train(x)
    rotation = faiss.vector_to_array(opq.A).reshape(m * s, m * s)  # applied: x @ R.T
    book = _train(x @ rotation.T, m * s, seed=seed, subdim=s, **kw)
    ROTATIONS[book.tobytes()] = (rotation, dim)
    return book


class OPQRows(_PQRows):
    def __init__(self, shape, codebook):
        self.rotation, self.dim = ROTATIONS[np.ascontiguousarray(codebook, np.float32).tobytes()]
        super().__init__((*shape[:-1], self.rotation.shape[0]), codebook)
        self.shape = tuple(shape)

    def encode(self, rows):
        rows = np.asarray(rows, np.float32)
        x = codec._padded(rows.reshape(-1, self.dim), self.rotation.shape[0])
        codes = self._quantizer().compute_codes(np.ascontiguousarray(x @ self.rotation.T))
        out = np.empty(len(rows), self.record)
        out["c"] = codes.reshape(len(rows), *self.shape[:-1], self.m)
        return out

    def decode(self, records):
        codes = records["c"]
        parts = self.codebook[np.arange(self.m), codes]
        flat = parts.reshape(*codes.shape[:-1], self.m * self.sub) @ self.rotation
        return np.ascontiguousarray(flat[..., :self.dim])


def main(argv):
    del argv
    codec.train_codebook, codec.PQRows = train_codebook, OPQRows
    search_latency.fidelity(FLAGS.savedmodel, FLAGS.data_dir, FLAGS.fidelity)


if __name__ == "__main__":
    search_latency.define_flags()
    app.run(main)
