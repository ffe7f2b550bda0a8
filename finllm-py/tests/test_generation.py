import threading
import time

import finllm
from conftest import SMOLLM2, cli_generate

PROMPT = "The Federal Reserve raised interest rates because"


def test_greedy_matches_the_rust_cli(smollm2):
    rust = cli_generate(SMOLLM2, PROMPT, "--max-tokens", "24", "--threads", "2")
    py = smollm2.generate(PROMPT, max_tokens=24)
    assert py.prompt_ids == rust["prompt_ids"]
    assert py.ids == rust["ids"]
    assert py.text == rust["text"]
    assert py.finish_reason == rust["finish_reason"] == "length"


def test_seeded_sampling_matches_the_rust_cli(tiny_path, tiny):
    args = ("--max-tokens", "16", "--temperature", "0.9", "--top-p", "0.95", "--top-k", "40", "--seed", "1234")
    rust = cli_generate(tiny_path, "the rate", *args)
    py = tiny.generate("the rate", max_tokens=16, temperature=0.9, top_p=0.95, top_k=40, seed=1234)
    assert py.ids == rust["ids"]
    other = tiny.generate("the rate", max_tokens=16, temperature=0.9, top_p=0.95, top_k=40, seed=1235)
    assert other.ids != py.ids


def test_top_logits_are_recorded(tiny):
    g = tiny.generate("the rate", max_tokens=5, top_logits=4)
    assert len(g.steps) == 5
    for step, chosen in zip(g.steps, g.ids):
        assert len(step) == 4
        assert step[0][0] == chosen  # greedy picks the best
        assert [l for _, l in step] == sorted((l for _, l in step), reverse=True)


def test_stream_yields_what_generate_returns(tiny):
    whole = tiny.generate("the rate", max_tokens=12)
    tokens = list(tiny.stream("the rate", max_tokens=12))
    assert [t.id for t in tokens] == whole.ids
    assert "".join(t.text for t in tokens) == whole.text
    assert tokens[-1].finish_reason == "length"
    assert all(t.finish_reason is None for t in tokens[:-1])


def test_dropping_a_stream_early_stops_it(tiny):
    it = tiny.stream("the rate", max_tokens=200)
    first = next(it)
    assert isinstance(first, finllm.Token)
    del it
    # The model is still usable and fast: the abandoned generation stopped.
    start = time.perf_counter()
    tiny.generate("the rate", max_tokens=4)
    assert time.perf_counter() - start < 5


def test_stop_strings(tiny):
    free = tiny.generate("the rate", max_tokens=24)
    stop = free.text[3:5]
    assert len(stop) == 2
    cut = tiny.generate("the rate", max_tokens=24, stop=[stop])
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]


def test_chat_accepts_dicts_and_tuples(tiny):
    msgs = [{"role": "system", "content": "terse"}, ("user", "rate?")]
    prompt = tiny.apply_chat_template(msgs)
    assert prompt == "<|im_start|>system\nterse<|im_end|>\n<|im_start|>user\nrate?<|im_end|>\n<|im_start|>assistant\n"
    a = tiny.chat(msgs, max_tokens=6)
    assert a.ids == tiny.generate(prompt, max_tokens=6).ids
    assert "".join(t.text for t in tiny.stream(messages=msgs, max_tokens=6)) == a.text


def test_tokenize_roundtrip(smollm2):
    text = "央行宣布下调存款准备金率0.5个百分点"
    ids = smollm2.tokenize(text)
    assert smollm2.detokenize(ids) == text
    assert smollm2.tokenize("<|im_start|>user") [0] == 1  # special tokens are parsed


def test_threads_share_one_model(tiny):
    prompts = ["the rate", "bonds", "on the", "a b c"]
    sequential = [tiny.generate(p, max_tokens=20).ids for p in prompts]
    results = [None] * len(prompts)

    def work(i):
        results[i] = tiny.generate(prompts[i], max_tokens=20).ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == sequential


def test_generation_releases_the_gil(smollm2):
    # While a generation runs, another Python thread keeps running. The real model, not the tiny
    # one: 150 tokens of the tiny model now take about as long as five of the counter's ticks,
    # while 64 of SmolLM2's take hundreds (a held GIL would allow none during the call).
    ticks = 0
    done = threading.Event()

    def count():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    g = smollm2.generate("The yield curve", max_tokens=64)
    done.set()
    counter.join()
    assert len(g.ids) == 64, "the generation ran its full length"
    assert ticks > 20


def test_model_properties_and_repr(tiny):
    assert tiny.architecture == "qwen2"
    assert tiny.vocab_size > 256
    assert tiny.context_length == 256
    assert tiny.threads == 1
    assert "qwen2" in repr(tiny)
    g = tiny.generate("the rate", max_tokens=2)
    html = g._repr_html_()
    assert html.startswith("<div><pre") and "finish: length" in html
    assert g.tokens_per_second > 0
