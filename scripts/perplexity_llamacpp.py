#!/usr/bin/env python3
"""Perplexity of a text under llama.cpp (llama-cpp-python), on the same token windows as
`finllm perplexity`: the text is tokenized (by llama.cpp), cut into windows of --context tokens that
each start with an empty cache, and every token but a window's first is scored with an f64
log-softmax. Prints one JSON object.

    .venv-llamacpp/bin/python scripts/perplexity_llamacpp.py MODEL.gguf [--text F] [--context N] [--threads T]
"""
import argparse
import json
import math

import numpy as np
from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--text", default="data/finance_eval.txt")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    llm = Llama(model_path=args.model, n_ctx=max(512, args.context), n_threads=args.threads,
                logits_all=True, verbose=False)
    # llama.cpp's own tokenizer: the text is longer than the model's context, which `finllm
    # generate` refuses. finllm tokenizes SmolLM2 exactly as llama.cpp does (tests/
    # reference_smollm2.rs); equal `scored_tokens` in both engines' output confirms the windows.
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)
    nll, scored, windows = 0.0, 0, 0
    for start in range(0, len(ids), args.context):
        window = ids[start:start + args.context]
        if len(window) < 2:
            continue
        llm.reset()
        llm.eval(window)
        logits = np.array(llm.scores[:len(window)], dtype=np.float64)
        for row, nxt in zip(logits[:-1], window[1:]):
            top = row.max()
            nll -= row[nxt] - top - math.log(np.exp(row - top).sum())
            scored += 1
        windows += 1
    print(json.dumps({"engine": "llama.cpp", "model": args.model, "perplexity": math.exp(nll / scored),
                      "mean_nll": nll / scored, "scored_tokens": scored, "windows": windows,
                      "context": args.context}))


if __name__ == "__main__":
    main()
