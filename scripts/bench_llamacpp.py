#!/usr/bin/env python3
"""llama.cpp's numbers in the shape of `finllm bench --json`.

    python3 scripts/bench_llamacpp.py MODEL.gguf --prompt-tokens 256 --gen-tokens 128 --threads 2 [--runs 5] --json

Each run is a fresh process (so peak RSS is per run): it builds a prompt of exactly
--prompt-tokens tokens from the same finance text finllm's benchmark uses, evaluates it in one
batch (prefill), then decodes --gen-tokens greedy tokens one at a time. Medians over runs.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
TEXT = (
    "The central bank held its policy rate at 4.25% while signalling that further tightening "
    "remains possible if core inflation fails to moderate. Credit spreads on investment-grade corporate bonds "
    "narrowed by eight basis points, and the two-year Treasury yield rose to 4.61% as traders priced fewer cuts. "
    "Net interest margin at regional lenders compressed for a third consecutive quarter, driven by higher deposit "
    "costs, while loan growth slowed to 2.3% year over year. "
)


def one_run(model, prompt_tokens, gen_tokens, threads):
    import resource
    import time

    import llama_cpp

    # llama-cpp-python keeps n_batch rows of logits and indexes them by position: n_batch must
    # cover the whole context, or decoding past n_batch positions fails.
    n_ctx = prompt_tokens + gen_tokens + 8
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=max(512, n_ctx), n_ubatch=max(512, prompt_tokens),
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    one = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    prompt = (one * (prompt_tokens // len(one) + 1))[:prompt_tokens]
    # Warm-up pages the weights in, as finllm's benchmark does.
    llm.eval(prompt[:8])
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    logits = llm.scores[llm.n_tokens - 1]
    nxt = int(logits.argmax())
    ttft = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([nxt])
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
    decode = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"prefill_tok_s": prompt_tokens / ttft, "decode_tok_s": gen_tokens / decode, "ttft_ms": ttft * 1e3,
            "peak_rss_mb": rss_mb}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if not VENV_PY.exists():
            subprocess.run([str(ROOT / "scripts" / "llamacpp_env.sh")], check=True)
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])
    if args.one_run:
        print(json.dumps(one_run(args.model, args.prompt_tokens, args.gen_tokens, args.threads)))
        return
    runs = []
    for _ in range(args.runs):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one-run"], check=True, capture_output=True,
                             text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    import llama_cpp

    result = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result.update(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, threads=args.threads, runs=args.runs,
                  engine=f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", model=args.model)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"prefill {result['prefill_tok_s']:.1f} tok/s, decode {result['decode_tok_s']:.1f} tok/s, "
              f"TTFT {result['ttft_ms']:.1f} ms, peak RSS {result['peak_rss_mb']:.0f} MiB, {args.threads} threads")


if __name__ == "__main__":
    main()
