"""A randomized soak of finllm.Engine from Python: threads and asyncio tasks at once, random
cancellations, dropped streams, deadlines, oversized prompts and a small queue. Every request
ends exactly once, with a result or a typed error, and the KV budget returns to what idle shared
prefixes hold."""

import asyncio
import random
import threading

import finllm
from finllm import errors

WORDS = "rate bond yield swap spread credit equity margin hedge basis curve desk".split()
# A shared beginning (about 40 tokens of the tiny model's tokenizer), so the prefix cache takes part.
SYSTEM = "You are a careful rates desk assistant."


def prompt(rng: random.Random) -> str:
    head = SYSTEM + " " if rng.random() < 0.5 else ""
    return head + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15)))


def one_request(engine, rng: random.Random, outcomes: list, lock: threading.Lock) -> None:
    """Run one random request to its end and record how it ended (exactly once)."""
    oversized = rng.random() < 0.1
    text = " ".join(WORDS * 200) if oversized else prompt(rng)
    deadline = rng.choice([None, None, None, 0.005, 0.05])
    wait = rng.choice([None, 0.0, 0.02])
    try:
        stream = engine.stream(text, max_tokens=rng.randint(1, 24), deadline_s=deadline, wait_s=wait)
    except (errors.EngineBusyError, errors.InvalidArgument, errors.ContextOverflowError):
        outcome = "refused"
    else:
        action = rng.randrange(3)
        try:
            if action == 0:  # read a few pieces, then drop the stream
                for _ in range(rng.randrange(4)):
                    if stream.next_token() is None:
                        break
                outcome = "dropped"
            elif action == 1:  # cancel, then read to the end
                stream.cancel()
                rest = list(stream)
                assert stream.result is not None
                assert stream.result.finish_reason in ("cancelled", "eos", "length")
                assert len(rest) <= len(stream.result.ids) + 1
                outcome = "ended"
            else:
                pieces = [t.text for t in stream]
                assert "".join(pieces) == stream.result.text
                assert stream.result.finish_reason in ("eos", "length")
                outcome = "ended"
        except errors.DeadlineExceededError:
            outcome = "deadline"
        del stream
    with lock:
        outcomes.append(outcome)


def test_threads_and_asyncio_soak(tiny):
    engine = finllm.Engine(
        tiny,
        max_running=6,
        step_tokens=24,
        kv_budget_tokens=900,
        queue_requests=4,
        queue_tokens=600,
        prefix_min_tokens=16,
        prefix_max_entries=2,
    )
    outcomes: list = []
    lock = threading.Lock()
    per_worker = 10

    def thread_worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_worker):
            one_request(engine, rng, outcomes, lock)

    async def async_worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(per_worker):
            text = prompt(rng)
            try:
                stream = engine.stream(text, max_tokens=rng.randint(1, 16), wait_s=rng.choice([None, 0.05]))
            except errors.EngineBusyError:
                outcome = "refused"
            else:
                got = []
                async for token in stream:
                    got.append(token.text)
                    if rng.random() < 0.2:
                        stream.cancel()
                assert "".join(got) == stream.result.text
                outcome = "ended"
            with lock:
                outcomes.append(outcome)

    async def tasks() -> None:
        await asyncio.gather(*(async_worker(100 + k) for k in range(6)))

    threads = [threading.Thread(target=thread_worker, args=(k,)) for k in range(12)]
    threads.append(threading.Thread(target=lambda: asyncio.run(tasks())))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker is stuck"

    total = (12 + 6) * per_worker
    assert len(outcomes) == total
    m = engine.metrics()
    # Refusals at submit are counted as rejected; everything else was accepted and ends once.
    assert m["rejected"] == outcomes.count("refused")
    assert m["submitted"] + m["rejected"] == total
    for _ in range(200):  # dropped streams end at the engine's next step
        m = engine.metrics()
        if m["completed"] + m["failed"] == m["submitted"] and m["running"] == 0 and m["queued"] == 0:
            break
        threading.Event().wait(0.01)
    assert m["completed"] + m["failed"] == m["submitted"], m
    assert m["failed"] >= outcomes.count("deadline"), m
    assert m["kv_tokens_reserved"] == m["prefix_cached_tokens"], m
    assert m["prefix_hit_tokens"] > 0, m
    assert m["prefix_cached_tokens"] <= 2 * (len(tiny.tokenize(SYSTEM)) + 16), m
    # The engine still serves, and a plain request gets what Model.generate gives.
    text = SYSTEM + " rate"
    assert engine.generate(text, max_tokens=6).ids == tiny.generate(text, max_tokens=6).ids
