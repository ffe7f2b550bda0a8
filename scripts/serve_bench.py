#!/usr/bin/env python3
"""The engine's serving benchmark (issue: Engine), every figure docs/PERF.md quotes, in one run.

    python3 scripts/serve_bench.py MODEL.gguf [--threads 2] [--rounds 3] [--json]

1. Aggregate decode tok/s of 1, 2, 4, 8 and 16 concurrent streams (64-token prompts, 128 tokens
   each): `finllm bench --concurrency N --probes 0`.
2. Time to first token of 64-token prompts arriving once a second while 8 streams decode, and on
   the idle engine; then the same with a 48-token shared prefix held by the prefix cache
   (`--shared-prefix-tokens 48`).
3. Makespan of 8 requests (64-token prompts, 128 greedy tokens each): finllm's engine serving
   them together against llama-cpp-python serving them one after another (its library has no
   batching of independent requests), alternating rounds; medians and their ratio.

Run it on a quiet machine: nothing else building or benchmarking.
"""
import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = ROOT / "target" / "release" / "finllm"
VENV_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
sys.path.insert(0, str(ROOT / "scripts"))


def finllm_bench(model, threads, *args):
    cmd = [str(CLI), "bench", "--model", model, "--threads", str(threads), "--json", *map(str, args)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def llama_sequential(model, threads, n, prompt_tokens, gen_tokens):
    """llama-cpp-python: n requests one after another, each from the same text offset finllm's
    benchmark gives stream i (7 * i tokens in)."""
    code = f"""
import json, time, llama_cpp
from bench_llamacpp import TEXT
llm = llama_cpp.Llama(model_path={model!r}, n_ctx={prompt_tokens + gen_tokens + 8}, n_batch=512, n_ubatch=512,
                      n_threads={threads}, n_threads_batch={threads}, verbose=False)
one = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
def prompt(i):
    k = (7 * i) % len(one)
    return ((one * ({prompt_tokens} // len(one) + 3))[k:k + {prompt_tokens}])
llm.eval(prompt(999)[:8]); llm.reset()
start = time.perf_counter()
for i in range({n}):
    llm.reset()
    llm.eval(prompt(i))
    nxt = int(llm.scores[llm.n_tokens - 1].argmax())
    for _ in range({gen_tokens} - 1):
        llm.eval([nxt])
        nxt = int(llm.scores[llm.n_tokens - 1].argmax())
print(json.dumps({{"makespan_ms": (time.perf_counter() - start) * 1e3}}))
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"))
    out = subprocess.run([str(VENV_PY), "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def isa():
    flags = pathlib.Path("/proc/cpuinfo").read_text() if pathlib.Path("/proc/cpuinfo").exists() else ""
    avx512 = sorted(set(re.findall(r"\bavx512[a-z]*\b", flags)))
    if avx512:
        return "AVX-512 (" + " ".join(avx512) + ")"
    return "AVX2" if re.search(r"\bavx2\b", flags) else platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not VENV_PY.exists():
        subprocess.run([str(ROOT / "scripts" / "llamacpp_env.sh")], check=True)
    m, t = args.model, args.threads
    report = {"isa": isa(), "threads": t, "model": m, "date": time.strftime("%Y-%m-%d %H:%M")}

    scaling = {}
    for n in (1, 2, 4, 8, 16):
        runs = [finllm_bench(m, t, "--concurrency", n, "--prompt-tokens", 64, "--gen-tokens", 128, "--probes", 0)
                for _ in range(args.rounds)]
        scaling[n] = {
            "aggregate_decode_tok_s": statistics.median(r["aggregate_decode_tok_s"] for r in runs),
            "tpot_p50_ms": statistics.median(r["tpot_p50_ms"] for r in runs),
        }
    report["scaling"] = scaling
    report["speedup_8_vs_1"] = scaling[8]["aggregate_decode_tok_s"] / scaling[1]["aggregate_decode_tok_s"]

    for key, extra in (("ttft", []), ("ttft_shared_prefix_48", ["--shared-prefix-tokens", 48])):
        r = finllm_bench(m, t, "--concurrency", 8, "--prompt-tokens", 64, "--gen-tokens", 128, "--probes", 20,
                         "--probe-interval-ms", 1000, *extra)
        report[key] = {k: r[k] for k in ("ttft_p50_ms", "ttft_p99_ms", "ttft_idle_ms", "prefix_hit_tokens_per_probe")}
        report[key]["p99_over_idle"] = r["ttft_p99_ms"] / r["ttft_idle_ms"]

    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(finllm_bench(m, t, "--concurrency", 8, "--prompt-tokens", 64, "--gen-tokens", 128,
                                 "--probes", 0)["makespan_ms"])
        theirs.append(llama_sequential(m, t, 8, 64, 128)["makespan_ms"])
    report["makespan_8"] = {
        "finllm_ms": statistics.median(ours),
        "llama_cpp_sequential_ms": statistics.median(theirs),
        "finllm_rounds": ours,
        "llama_cpp_rounds": theirs,
    }
    report["makespan_8"]["ratio_llama_over_finllm"] = report["makespan_8"]["llama_cpp_sequential_ms"] / report[
        "makespan_8"]["finllm_ms"]
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
