#!/usr/bin/env python3
"""The embedded vector index next to hnswlib on the same random vectors, same M and ef.

    python3 scripts/index_bench.py [--n 100000] [--dim 384] [--m 16] [--ef-construction 200] [--ef-search 64 [EF ...]]

Needs numpy and hnswlib (pip) and `cargo bench --bench index --no-run` built. Both are timed
single-threaded, one after the other (never at the same time); prints one JSON object with
both results (build seconds, recall@10 against exact search, query milliseconds, QPS). With several
`--ef-search` values, the first is the main one (filters included) and each is also measured
unfiltered on the same graphs (`sweep`)."""

import argparse
import json
import pathlib
import struct
import subprocess
import time

import hnswlib
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--m", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[64])
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()

    rng = np.random.default_rng(42)
    vectors = rng.uniform(-1, 1, (a.n, a.dim)).astype(np.float32)
    queries = rng.uniform(-1, 1, (a.queries, a.dim)).astype(np.float32)
    data = ROOT / "target" / "index_bench.f32"
    with open(data, "wb") as f:
        f.write(struct.pack("<III", a.n, a.queries, a.dim))
        f.write(vectors.tobytes())
        f.write(queries.tobytes())

    # Ground truth: exact cosine top-10.
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(q_unit @ unit.T), axis=1)[:, :10]

    index = hnswlib.Index(space="cosine", dim=a.dim)
    index.init_index(max_elements=a.n, M=a.m, ef_construction=a.ef_construction, random_seed=42)
    index.set_num_threads(1)
    start = time.perf_counter()
    index.add_items(vectors, np.arange(a.n))
    build_s = time.perf_counter() - start
    sweep = []
    for ef in a.ef_search:
        index.set_ef(ef)
        start = time.perf_counter()
        found = 0
        for i, q in enumerate(queries):
            labels, _ = index.knn_query(q, k=10)
            found += len(set(labels[0]) & set(truth[i]))
        query_ms = (time.perf_counter() - start) * 1e3 / a.queries
        sweep.append({"ef_search": ef, "recall_at_10": found / (10 * a.queries), "query_ms": query_ms,
                      "qps": 1e3 / query_ms})
    hnsw = {"build_s": build_s, **{k: v for k, v in sweep[0].items() if k != "ef_search"}}
    if len(sweep) > 1:
        hnsw["sweep"] = sweep

    bench = subprocess.run(
        ["cargo", "bench", "-q", "--bench", "index", "--", str(a.n), str(a.dim), str(a.m), str(a.ef_construction),
         str(a.ef_search[0]), "--data", str(data), "--ef-sweep", ",".join(map(str, a.ef_search))],
        cwd=ROOT, check=True, capture_output=True, text=True,
        env={**__import__("os").environ, "RAYON_NUM_THREADS": "1"},
    )
    ours = json.loads(bench.stdout.strip().splitlines()[-1])
    print(json.dumps({"hnswlib": hnsw, "finllm": ours}))


if __name__ == "__main__":
    main()
