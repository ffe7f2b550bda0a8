"""Per-call cost of the Python layer on a tiny model (not collected by pytest).

    python finllm-py/tests/bench_overhead.py target/tiny-llama.gguf
"""
import json
import sys
import timeit

import finllm

model = finllm.Model.load(sys.argv[1], threads=1)
model.generate("The rate", max_tokens=1)
tokenize = timeit.timeit(lambda: model.tokenize("The rate"), number=20000) / 20000 * 1e6
generate = timeit.timeit(lambda: model.generate("The rate", max_tokens=1), number=2000) / 2000 * 1e6
print(json.dumps({"layer": "python", "tokenize_us": round(tokenize, 2), "generate1_us": round(generate, 2)}))
