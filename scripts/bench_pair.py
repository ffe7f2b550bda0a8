#!/usr/bin/env python3
"""finllm against llama.cpp on one GGUF, alternating, for a noisy machine.

    python3 scripts/bench_pair.py MODEL.gguf [--threads 2] [--rounds 3] [--runs 3]
                                  [--prompt-tokens 256] [--gen-tokens 128]
                                  [--finllm target/release/finllm]

Each round runs `finllm bench` and then scripts/bench_llamacpp.py (in .venv-llamacpp/, made by
scripts/llamacpp_env.sh), each taking the median of --runs runs; the rounds alternate so that
both engines see the same background load. Prints one JSON line per engine and round, then one
with the medians over rounds and finllm's ratios (prefill, decode: higher is better for finllm;
ttft: lower is better), the instruction set finllm's kernels ran on and the llama.cpp build.

FINLLM_MAX_ISA=avx2 FINLLM_LLAMACPP_ISA=avx2 compares both engines as an AVX2-only machine
runs them (see scripts/llamacpp_env.sh).
"""
import argparse
import json
import pathlib
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--finllm", default="target/release/finllm")
    a = p.parse_args()
    llama_py = subprocess.run(
        [str(ROOT / "scripts" / "llamacpp_env.sh")], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()
    shape = ["--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens),
             "--threads", str(a.threads), "--runs", str(a.runs), "--json"]
    engines = {
        "finllm": [a.finllm, "bench", "--model", a.model] + shape,
        "llama.cpp": [llama_py, "scripts/bench_llamacpp.py", a.model] + shape,
    }
    fields = ["prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mb"]
    seen = {name: {f: [] for f in fields} for name in engines}
    isa = None
    for r in range(a.rounds):
        for name, cmd in engines.items():
            res = run(cmd)
            isa = res.get("isa", isa) if name == "finllm" else isa
            for f in fields:
                seen[name][f].append(float(res[f]))
            print(json.dumps({"round": r + 1, "engine": name, **{f: round(float(res[f]), 1) for f in fields}}))
            sys.stdout.flush()
    med = {name: {f: statistics.median(v) for f, v in s.items()} for name, s in seen.items()}
    summary = {
        "model": a.model,
        "threads": a.threads,
        "rounds": a.rounds,
        "finllm_isa": isa,
        "llama_cpp": pathlib.Path(llama_py).parents[1].name,
        **{f"{name}_{f}": round(v, 1) for name, m in med.items() for f, v in m.items()},
        "prefill_ratio": round(med["finllm"]["prefill_tok_s"] / med["llama.cpp"]["prefill_tok_s"], 2),
        "decode_ratio": round(med["finllm"]["decode_tok_s"] / med["llama.cpp"]["decode_tok_s"], 2),
        "ttft_ratio": round(med["finllm"]["ttft_ms"] / med["llama.cpp"]["ttft_ms"], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
