"""finllm.Engine: Python threads and asyncio tasks share one continuous batch, and every request
gets what Model.generate gives it alone."""

import asyncio
import threading

import pytest

import finllm

PROMPTS = [
    "The yield curve inverted because",
    "Basel III requires banks to",
    "A bond's duration measures",
    "Write a note on counterparty risk.",
    "The central bank held rates at",
    "Credit spreads narrowed as",
]


def test_generate_from_threads_matches_model_generate(smollm2):
    engine = finllm.Engine(smollm2, max_running=4, step_tokens=16)
    alone = {p: smollm2.generate(p, max_tokens=10) for p in PROMPTS}
    got = {}

    def worker(p):
        got[p] = engine.generate(p, max_tokens=10)

    threads = [threading.Thread(target=worker, args=(p,)) for p in PROMPTS]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in PROMPTS:
        assert isinstance(got[p], finllm.Generation)
        assert got[p].ids == alone[p].ids, p
        assert got[p].text == alone[p].text, p
    m = engine.metrics()
    assert m["submitted"] == len(PROMPTS) and m["completed"] == len(PROMPTS) and m["failed"] == 0
    assert m["ttft_ms"]["count"] == len(PROMPTS)
    assert m["ttft_ms"]["p50"] <= m["ttft_ms"]["p99"] <= m["ttft_ms"]["max"]


def test_stream_yields_text_pieces_and_the_result(tiny):
    engine = finllm.Engine(tiny)
    whole = tiny.generate("the rate", max_tokens=12, temperature=0.8, seed=3)
    stream = engine.stream("the rate", max_tokens=12, temperature=0.8, seed=3)
    pieces = [t.text for t in stream]
    assert "".join(pieces) == whole.text
    assert stream.result.ids == whole.ids
    assert stream.result.finish_reason == whole.finish_reason
    chat = engine.stream(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert "".join(t.text for t in chat) == tiny.chat([("user", "hi")], max_tokens=4).text


def test_async_for_serves_tasks_concurrently(smollm2):
    engine = finllm.Engine(smollm2, max_running=4)

    async def one(p):
        text = []
        async for token in engine.stream(p, max_tokens=8):
            text.append(token.text)
        return "".join(text)

    async def main():
        return await asyncio.gather(*(one(p) for p in PROMPTS[:4]))

    texts = asyncio.run(main())
    for p, text in zip(PROMPTS[:4], texts):
        assert text == smollm2.generate(p, max_tokens=8).text


def test_cancel_and_deadline(tiny):
    engine = finllm.Engine(tiny)
    stream = engine.stream("the rate", max_tokens=200)
    first = next(stream)
    stream.cancel()
    rest = list(stream)
    assert stream.result.finish_reason in ("cancelled", "eos")
    assert len(rest) + 1 == len(stream.result.ids) + (stream.result.finish_reason == "eos")
    assert first.text == "" or stream.result.text.startswith(first.text)
    with pytest.raises(finllm.errors.DeadlineExceededError):
        engine.generate("the rate", max_tokens=50, deadline_s=0.0)
    m = engine.metrics()
    assert m["cancelled"] + m["completed"] >= 1 and m["failed"] == 1


def test_bad_requests_raise_typed_errors(tiny):
    with pytest.raises(finllm.errors.InvalidArgument):
        finllm.Engine(tiny, max_running=0)
    with pytest.raises(finllm.errors.InvalidArgument):
        finllm.Engine(tiny, kv_budget_tokens=10, kv_budget_bytes=10)
    engine = finllm.Engine(tiny, kv_budget_tokens=64)
    with pytest.raises(finllm.errors.InvalidArgument):  # prompt + max_tokens over the whole budget
        engine.generate("the rate", max_tokens=100)
    with pytest.raises(finllm.errors.InvalidArgument):
        engine.generate("the rate", max_tokens=4, wait_s=-1.0)
    with pytest.raises(finllm.errors.ContextOverflowError):
        finllm.Engine(tiny).generate("the rate", max_tokens=10**6)
    with pytest.raises(finllm.errors.InvalidArgument):
        engine.stream()
    assert issubclass(finllm.errors.EngineBusyError, finllm.errors.FinllmError)
    assert engine.metrics()["rejected"] == 1
