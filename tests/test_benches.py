"""Every bench runs to its end at its small size (``--small``): one subprocess per bench,
from the repository root, as ``python bench/NAME.py --small``. ``beam_overhead``,
``encode_trace``, ``search_latency`` and ``service_load`` are given the test run's trained
tiny export and data (``--savedmodel`` / ``--data_dir``, the flags their full size takes)
instead of making their own (a random export costs a bench about as much as the rest of
its small run);
``mixed_precision`` trains on the test run's tiny data and vocab (``--data_dir`` /
``--vocab_file``). Each test reads the bench's last figure (and the figures the bench
promises to print) from its output, so a bench that crashes, stops early or stops printing
what it measures fails here; the figures' values at these sizes mean nothing and are not
checked."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from hgan.config import preset

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUMBER = r"[\d.,]+"
MS = rf"p50 {NUMBER} ms, p99 {NUMBER} ms"

# {bench: regexes that must all match its stdout; the first is its final figure line}
EXPECTED = {
    "beam_overhead": [
        rf"pipeline overhead on one machine, one worker: {NUMBER}x index's time \(median of "
        rf"1 pairs; target <= 1.3\)",
        rf"24 images \({NUMBER} MiB\) of the test split in a folder",
        rf"pair 1: index {NUMBER} s \({NUMBER} images/s\), pipeline \(1 worker\) {NUMBER} s "
        rf"\({NUMBER} images/s\): ratio {NUMBER}",
    ],
    "data_pipeline": [
        rf"for scale: training runs at {NUMBER} images/s \(measured here: .*\), so the "
        rf"pipeline is {NUMBER}x \(shuffle\), {NUMBER}x \(P×K\) faster than the model it feeds",
        rf"write: {NUMBER} images in {NUMBER} s",
        rf"read \(plain shuffle\): {NUMBER} pairs at 64x32 = {NUMBER} pairs/s",
        rf"read \(P×K, P=2 K=4\): {NUMBER} pairs at 64x32 = {NUMBER} pairs/s",
    ],
    "demo_step": [
        # The run length is the demo preset's own step count. One setting in this process
        # (--onednn=on): "both" runs the same code twice in child processes.
        rf"oneDNN on: build {NUMBER} s, token cache {NUMBER} s, first step {NUMBER} s, step "
        rf"median {NUMBER} ms over 2 \({preset('demo').train.steps} demo steps: {NUMBER} min\)",
    ],
    "encode_trace": [
        rf"node times summed over the {NUMBER} heaviest parts: {NUMBER} ms",
        r"\w+: encode_text of one caption \(16 words\)",
        rf"  plain call p50 {NUMBER} ms; traced call p50 {NUMBER} ms, {NUMBER} nodes, node "
        rf"times summed {NUMBER} ms",
        rf"  +{NUMBER} ms +{NUMBER} nodes  token_embeddings",
        rf"  +{NUMBER} ms +{NUMBER} nodes  text_head/bilstm",
        rf"  +{NUMBER} ms +{NUMBER} nodes  tokenizer and chunker",
    ],
    "eval_scoring": [
        # The C kernel scores both directions' pairs once; XLA each direction apart.
        rf"two_stage: {NUMBER} s \(prepare {NUMBER} s, (stage 1 {NUMBER} s, local heads "
        rf"{NUMBER} s, merge {NUMBER} s|"
        rf"t2i {NUMBER} s, i2t {NUMBER} s)\).*"
        rf"metrics {NUMBER} s\n(.*\n){{5,}}  memory: .* peak {NUMBER} GiB  target < 4 GiB",
        rf"  {NUMBER} GFLOP/s of the work the directions ask for \({NUMBER} TFLOP, a pair both "
        rf"ask for counted twice\) = {NUMBER} % of peak",
        rf"  both directions \(one grid\): {NUMBER} s, {NUMBER} k pairs/s, {NUMBER} GFLOP/s = "
        rf"{NUMBER} % of peak",
        rf"  (local heads, both directions' pairs once: {NUMBER} s, {NUMBER} k pairs/s, "
        rf"{NUMBER} GFLOP/s = {NUMBER} % of peak|"
        rf"  t2i: {NUMBER} s, {NUMBER} k pairs/s, {NUMBER} GFLOP/s = {NUMBER} % of peak\n"
        rf"  i2t: {NUMBER} s, {NUMBER} k pairs/s, {NUMBER} GFLOP/s = {NUMBER} % of peak)",
        rf"profile (both|i2t)/word: a call of (20x5|\d+) pairs, \d+ word slots, {NUMBER} ms( = gather "
        rf"-?{NUMBER} \+ gamma -?{NUMBER} \+ select -?{NUMBER} \+ fuse/MLP -?{NUMBER} ms| in "
        rf"the C kernel \(gamma, select, fuse, MLP from the tables\)); "
        rf"\d+ calls {NUMBER} s of the loop's {NUMBER} s \(outside the calls: -?{NUMBER} s\)",
        rf"exact: {NUMBER} s \(prepare {NUMBER} s\)",
        rf"  prepare: {NUMBER} s for {NUMBER} TFLOP of the heads' per-item linear maps \(not in "
        rf"pair_flops\) = {NUMBER} % of peak",
        rf"  the time outside the local heads \({NUMBER} s\) alone caps pair_flops' share at "
        rf"{NUMBER} % of peak",
        r"  local heads: (the C kernel, gamma included \(local_head_kernel\)|gamma by oneDNN, "
        r"then score_selected under XLA)",
        rf"word: {NUMBER} pairs computed \(padding included\) = {NUMBER}x the 300 needed",
        rf"{NUMBER} GFLOP/s achieved .* = {NUMBER} % of the float32 matmul peak measured in "
        rf"this process, {NUMBER} GFLOP/s \(the mean of {NUMBER} before the scoring and "
        rf"{NUMBER} after it\); {NUMBER}x the FLOP floor at that peak",
        rf"projected at 6156x3074: {NUMBER} s",
    ],
    "gallery_index": [
        r"re-rank store at the paper's widths \(global float16 \+ word and phrase 15 × 512\): "
        r"float16 31,744 B/image, int8 16,504, pq 3,604 \(8\.8x smaller than float16; .*\)",
        rf"gather 10 candidates' word \+ phrase tables \(page cache as it is\): {MS}",
        rf"  IVF-PQ nprobe   8, short list 160 re-scored exactly: recall@10 {NUMBER}, one "
        rf"query {MS}",
        rf"pq store: gather and decode 10 candidates' word \+ phrase tables: {MS}",
        rf"pq store: gather and decode them before the rotation \(a query's read when the "
        rf"export folds the rotation into its first layers\): {MS}",
        rf"pq store without its rotation \(--nopq_rotation\): gather and decode 10 "
        rf"candidates' word \+ phrase tables: {MS}",
        rf"IVF{NUMBER},Flat by hgan.serving.ann.build: .* loaded by ann.load: "
        r"OnDiskInvertedLists",
        rf"nprobe   8: recall@10 {NUMBER}, one query {MS}",
        rf"float16 vs float32 top-10 overlap over 5,000: {NUMBER}",
    ],
    "gallery_verify": [
        rf"a 1 M-image gallery \({NUMBER} GB\): verify {NUMBER} s from disk, {NUMBER} s from "
        r"the page cache",
        rf"CRC-32 of appended bytes \(the writer's added work, in memory\): {NUMBER} MB/s",
        rf"verify, files in the page cache: {NUMBER} MB in {NUMBER} s = {NUMBER} MB/s \(clean\)",
    ],
    "gpu_estimate": [
        r"  TF_FORCE_GPU_ALLOW_GROWTH=true hgan-train --config=paper .*"
        r"--set=train.mixed_precision=true .*nvidia-smi --query-gpu=memory.used .*",
        r"ESTIMATE \(not measured\): the tiny preset's HGAN, batch 4",
        rf"training step: {NUMBER} TFLOPs \(3 x the trained forward \+ the BERT forward\)",
        rf"memory: .* = {NUMBER} GB of the A100 40GB SXM's 40 GB",
        rf"step time on one A100 40GB SXM .*: compute {NUMBER} ms, memory traffic {NUMBER} "
        rf"ms -> about {NUMBER} ms a step",
    ],
    "mixed_precision": [
        rf"1 seeds: float32 finished 1, mixed_float16 finished 1; mean \|val t2i R1 "
        rf"difference\| {NUMBER} points over 1 seeds",
        r"seed 0 mixed_float16 +finished, last val t2i R1 [\d.]+, loss-scale skips \d+",
    ],
    "search_latency": [
        rf"resident memory of the 2,000-image index in the service: -?{NUMBER} MiB \(the two "
        rf"services' VmRSS apart; anonymous [-+]{NUMBER} MiB, file pages [-+]{NUMBER} MiB: "
        r"the gallery's memory-mapped files and the IVF's lists count as their pages are "
        r"read\)",
        rf"service \(hgan-serve, its own process\), POST /api/search over the 2,000 gallery "
        rf"\(IVF, nprobe 8, K = 20\), 20 requests one at a time: {MS}",
        rf"  over a 1,000-image gallery of the same shapes \(exact stage 1\): {MS}",
        rf"service process memory after its requests, MiB \(VmRSS, RssAnon, RssFile, VmHWM\): "
        rf"2,000 images {NUMBER} / {NUMBER} / {NUMBER} / {NUMBER}; 1,000 images {NUMBER} / "
        rf"{NUMBER} / {NUMBER} / {NUMBER}",
        rf"stage 1 recall@20 of the IVF against exact search, the 20 captions' embeddings, "
        rf"nprobe   8(, short list \d+)?: {NUMBER}; one query {MS}",
        rf"nprobe  16(, short list \d+)?: {NUMBER}; one query {MS}",
        r"global vectors: memmap of .*feat\.global\.bin",
        *[rf"fidelity, {spec} \({NUMBER} B/image\): t2i R1 {NUMBER} \([-+]{NUMBER}\) mAP "
          rf"{NUMBER} \([-+]{NUMBER}\); i2t R1 {NUMBER} \([-+]{NUMBER}\) mAP {NUMBER} "
          rf"\([-+]{NUMBER}\)" for spec in ("int8", "pq:6:0:held")],
        *[rf"  {d}: \d+ of \d+ queries changed their first item \(\d+ to a relevant one, \d+ "
          rf"away from one\); score error sd {NUMBER} = {NUMBER} % of the scores' sd; \d+ "
          rf"queries had their top two within twice that under float32, \d+ of them a "
          rf"relevant item first" for d in ("t2i", "i2t")],
        r"fidelity over the test split: \d+ images, \d+ captions, K = \d+",
        r"exact brute force over 2,000: Searcher\.query, 5 queries one at a time; re-ranked "
        r"exactly K = 20 candidates in every query",
        r"IVF\d+ nprobe 8 over 2,000: Searcher\.query, 20 queries one at a time; re-ranked "
        r"exactly K = 20 candidates in every query",
        rf"  rerank  {MS}\n  other   {MS}\n  total   {MS}",
    ],
    "service_load": [
        rf"\d+ images, 2 clients × 5 requests \(client threads in the server's own process, "
        rf"sharing its \d+ cores\), top_k 5, rerank_k \d+: {NUMBER} requests/s, p50 \d+ ms, "
        rf"p99 \d+ ms, 0 errors; RSS \(server \+ clients\) \d+ → \d+ MiB",
        rf"indexed the test split in {NUMBER} s",
    ],
    "local_head_parts": [
        *[rf"{level} \({slots} slots\), {kept} kept, its {streamed} {heat}: {NUMBER} = product "
          rf"{NUMBER} \({NUMBER} GFLOP/s\) \+ transpose {NUMBER} \+ select {NUMBER} \+ Eq. 8 "
          rf"{NUMBER}"
          for level, slots in (("phrase", 5), ("word", 32))  # the last line first
          for kept, streamed in (("image", "texts"), ("text", "images"))
          for heat in ("warm", "cold")],
        r"one thread, 50 pairs a line, H = 32, 15 regions, k1 = 4, k2 = 2; microseconds a pair",
    ],
    "topk_select": [
        rf"word call \(4 x 4 pairs, H = 16; scores equal within 1e-5; ratios to the second\): "
        rf"gamma alone \(oneDNN\) {NUMBER} ms \({NUMBER}\); gamma, then XLA's selections "
        rf"inside the call {NUMBER} ms \(1.00\); gamma, then the C kernel's selections, then "
        rf"the rest under XLA {NUMBER} ms \({NUMBER}\); the whole call in the C kernel, gamma "
        rf"included \(score_rows\) {NUMBER} ms \({NUMBER}\)",
        rf"one max: {NUMBER} ms, {NUMBER} ns per entry",
        r"one block: 4 texts x 4 images = 16 pairs, 40 word slots x 15 regions",
        *[rf"  {form}: the rounds' indices exactly"
          for form in ("packed", "slabs", "top_k", "C kernel")],
        *[rf"{form}: {NUMBER} ms, {NUMBER} ns per entry and round"
          for form in ("rounds", "packed", "slabs", "top_k", "C kernel")],
    ],
    "train_step": [
        rf"ratio full / backbones: {NUMBER}   \(target <= 1.05: (met|NOT met)\)",
        rf"    full: {NUMBER} GFLOP a step -> {NUMBER} GFLOP/s = {NUMBER} % of the float32 "
        rf"matmul peak measured in this process \({NUMBER} GFLOP/s\)",
        rf"baseline: {NUMBER} GFLOP a step",
        r"Adam, weight decay 0.0005 \(l2\)",
        rf"baseline: median +{NUMBER} ms/step",
        rf"    full: median +{NUMBER} ms/step",
    ],
}


# Extra flags of a bench's small run.
EXTRA = {"demo_step": ["--onednn=on"]}
# Benches that read the test run's trained tiny export and data instead of making their own.
SERVING = ("beam_overhead", "encode_trace", "search_latency", "service_load")
# Benches that train on the test run's tiny data and vocab instead of a generated demo set.
TRAINING = ("mixed_precision",)


@pytest.mark.parametrize("bench", sorted(EXPECTED))
def test_bench_runs_to_its_end_at_small_size(bench, request):
    extra = list(EXTRA.get(bench, []))
    if bench in SERVING:
        extra += [f"--savedmodel={request.getfixturevalue('hgan_export')}",
                  f"--data_dir={request.getfixturevalue('tiny_data')}"]
    if bench in TRAINING:
        extra += [f"--data_dir={request.getfixturevalue('tiny_data')}",
                  f"--vocab_file={request.getfixturevalue('tiny_vocab')}"]
    proc = subprocess.run([sys.executable, os.path.join("bench", f"{bench}.py"), "--small",
                           *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert proc.returncode == 0, f"bench/{bench}.py --small exited {proc.returncode}:\n" \
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    expected = EXPECTED[bench]
    if shutil.which(os.environ.get("CC") or "cc") is None:
        # Without a C compiler the kernel's lines are left out, and the bench says why.
        if bench == "topk_select":
            expected = [p for p in expected[1:] if "C kernel" not in p] + [
                r"C kernel: not built"]
        elif bench == "local_head_parts":
            expected = [r"no C compiler \(.*\): nothing to measure"]
    final, *others = expected
    assert re.search(rf"(?:{final})\s*\Z", proc.stdout), \
        f"bench/{bench}.py --small did not end with its last figure:\n{proc.stdout[-2000:]}"
    for pattern in others:
        assert re.search(pattern, proc.stdout), \
            f"bench/{bench}.py --small printed no {pattern!r}:\n{proc.stdout[-3000:]}"
