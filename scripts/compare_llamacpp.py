#!/usr/bin/env python3
"""Compare finllm with llama.cpp on any GGUF, token by token and logit by logit.

    python3 scripts/compare_llamacpp.py MODEL.gguf [--prompt TEXT ...] [--max-tokens 32]
                                        [--threads 2] [--finllm target/release/finllm] [--json]

Runs greedy decoding in both engines (finllm through `finllm generate --json --top-logits 10`,
llama.cpp through llama-cpp-python in .venv-llamacpp/, created by scripts/llamacpp_env.sh on
first use) and reports, per prompt: whether tokenisation is identical, how many greedy tokens
agree, llama.cpp's top-1/top-2 margin where they first differ, and |logit difference| at
llama.cpp's top-10 ids (p50/p99/max) over the steps whose contexts are still equal.
Exits non-zero when tokenisation differs or the engines disagree on a step whose llama.cpp
margin exceeds 1.0 (a disagreement that summation-order noise cannot explain).
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
DEFAULT_PROMPTS = [
    "The Federal Reserve raised interest rates because",
    "Q3 2024 results: revenue grew 12% to $4.2 billion. Net income was",
    "央行宣布下调存款准备金率0.5个百分点，",
]


def ensure_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        if os.environ.get("FINLLM_COMPARE_REEXEC"):
            sys.exit("llama_cpp is not importable even in .venv-llamacpp")
        if not VENV_PY.exists():
            subprocess.run([str(ROOT / "scripts" / "llamacpp_env.sh")], check=True)
        os.environ["FINLLM_COMPARE_REEXEC"] = "1"
        os.execv(str(VENV_PY), [str(VENV_PY), *sys.argv])


def quantile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return sorted_values[round((len(sorted_values) - 1) * q)]


def top_k(logits, k=10):
    order = sorted(range(len(logits)), key=lambda i: (-logits[i], i))[:k]
    return [(i, float(logits[i])) for i in order]


def llama_cpp_greedy(llm, text, max_tokens):
    meta = llm.metadata
    add_bos = meta.get("tokenizer.ggml.add_bos_token", "false" if meta.get("tokenizer.ggml.model") == "gpt2" else "true")
    prompt_ids = llm.tokenize(text.encode(), add_bos=add_bos == "true", special=True)
    llm.reset()
    llm.eval(prompt_ids)
    ids, steps = [], []
    eos = {llm.token_eos()}
    for _ in range(max_tokens):
        logits = llm.scores[llm.n_tokens - 1].tolist()
        steps.append(top_k(logits))
        nxt = steps[-1][0][0]
        if nxt in eos:
            break
        ids.append(nxt)
        llm.eval([nxt])
    return prompt_ids, ids, steps


def compare(ours, ref_prompt_ids, ref_ids, ref_steps):
    same_prompt = ours["prompt_ids"] == ref_prompt_ids
    agree = 0
    for a, b in zip(ours["ids"], ref_ids):
        if a != b:
            break
        agree += 1
    diffs = []
    # Steps 0..agree (inclusive) have identical contexts in both engines.
    for i in range(min(agree + 1, len(ref_steps), len(ours["steps"]))):
        mine = dict((t, l) for t, l in ours["steps"][i])
        diffs.extend(abs(mine[t] - l) for t, l in ref_steps[i] if t in mine)
    diffs.sort()
    first_diff = None
    if agree < min(len(ours["ids"]), len(ref_ids)):
        top = ref_steps[agree]
        first_diff = {"step": agree, "llama_cpp_margin": top[0][1] - top[1][1]}
    return {
        "tokenisation_identical": same_prompt,
        "greedy_tokens_agreeing": agree,
        "greedy_tokens": len(ref_ids),
        "first_difference": first_diff,
        "logit_diff_p50": quantile(diffs, 0.5),
        "logit_diff_p99": quantile(diffs, 0.99),
        "logit_diff_max": diffs[-1] if diffs else float("nan"),
        "logits_compared": len(diffs),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", action="append")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--finllm", default=str(ROOT / "target" / "release" / "finllm"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    ensure_llama_cpp()
    import llama_cpp

    llm = llama_cpp.Llama(model_path=args.model, n_ctx=2048, n_threads=args.threads, logits_all=True, verbose=False)
    results, failed = [], False
    for text in args.prompt or DEFAULT_PROMPTS:
        out = subprocess.run(
            [args.finllm, "generate", "--model", args.model, "--prompt", text, "--max-tokens", str(args.max_tokens),
             "--temperature", "0", "--json", "--top-logits", "10", "--threads", str(args.threads), "--quiet"],
            check=True, capture_output=True, text=True,
        )
        ours = json.loads(out.stdout)
        r = compare(ours, *llama_cpp_greedy(llm, text, args.max_tokens))
        r["prompt"] = text
        results.append(r)
        fd = r["first_difference"]
        if not r["tokenisation_identical"] or (fd and fd["llama_cpp_margin"] > 1.0):
            failed = True
    if args.json:
        print(json.dumps({"model": args.model, "results": results, "ok": not failed}, ensure_ascii=False))
    else:
        for r in results:
            fd = r["first_difference"]
            where = "none" if fd is None else f"step {fd['step']} (llama.cpp margin {fd['llama_cpp_margin']:.2f})"
            print(f"{r['prompt'][:48]!r}")
            print(f"  tokenisation identical: {r['tokenisation_identical']}; greedy agree "
                  f"{r['greedy_tokens_agreeing']}/{r['greedy_tokens']}; first difference: {where}")
            print(f"  top-10 |logit diff| p50 {r['logit_diff_p50']:.3f} p99 {r['logit_diff_p99']:.3f} "
                  f"max {r['logit_diff_max']:.3f} over {r['logits_compared']} values")
        print("OK" if not failed else "MISMATCH")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
