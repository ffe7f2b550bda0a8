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


def test_one_request_path_guarded_on_the_model_and_the_engine(smollm2, tmp_path):
    """The same arguments on Model and Engine, guarded or not, whole or streamed: one answer, and
    the audit log records each request (streams as opened + closed)."""
    log = tmp_path / "audit.log"
    guard = finllm.Guard(mask_pii=True, audit=finllm.AuditLog(str(log)))
    engine = finllm.Engine(smollm2)
    prompt = "My phone is 13800138000. Bond yields rose because"
    kwargs = dict(max_tokens=8, guard=guard, caller_id="desk-3")
    answers = [smollm2.generate(prompt, **kwargs), engine.generate(prompt, **kwargs)]
    for start in (smollm2.stream, engine.stream):
        stream = start(prompt, **kwargs)
        pieces = [t.text for t in stream]
        assert "".join(pieces) == stream.result.text
        answers.append(stream.result)
    masked = smollm2.generate("My phone is <PHONE_1>. Bond yields rose because", max_tokens=8)
    for a in answers:
        assert isinstance(a, finllm.GuardedGeneration)
        assert a.masked_prompt == "My phone is <PHONE_1>. Bond yields rose because"
        assert a.ids == masked.ids and a.text == answers[0].text
    assert [a.audit_seq for a in answers] == [1, 2, 4, 6]
    records = finllm.audit_records(str(log))
    assert [r["phase"] for r in records] == ["complete", "complete", "opened", "closed", "opened", "closed"]
    assert {r["caller_id"] for r in records} == {"desk-3"}
    assert finllm.audit_verify(str(log)).ok


def test_unknown_request_options_are_refused(tiny):
    engine = finllm.Engine(tiny)
    for call in (tiny.generate, tiny.stream, engine.generate, engine.stream):
        with pytest.raises(TypeError, match="unexpected keyword argument 'max_token'"):
            call("the rate", max_token=3)
    with pytest.raises(finllm.errors.InvalidArgument, match="prompt or messages"):
        tiny.generate("the rate", messages=[("user", "hi")])
    with pytest.raises(TypeError):
        tiny.generate("the rate", guard="not a guard")
    with pytest.raises(TypeError, match="wait_s"):  # a queue wait means nothing on a model alone
        tiny.generate("the rate", wait_s=1.0)
    assert engine.generate("the rate", wait_s=1.0, max_tokens=2).ids == tiny.generate("the rate", max_tokens=2).ids
