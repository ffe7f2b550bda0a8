import ast
import inspect
import json
import pathlib
import threading
import time

import pytest

import finllm
from finllm import _finllm, errors

CLIENT = "客户身份证号11010519491231002X，手机13800138000"
RAW_ID = "11010519491231002X"
PROMPT = "The Federal Reserve raised interest rates because"


def block_policy(phrase: str) -> finllm.Policy:
    # json.dumps writes a valid TOML basic string (\" \\ \n \uXXXX escapes).
    return finllm.Policy.from_toml(
        f"""
[[rules]]
id = "test.block"
category = "test_phrase"
action = "block"
keywords = [{json.dumps(phrase)}]
"""
    )


# ---- PII -----------------------------------------------------------------------------------------


def test_masking_and_unmasking_round_trip():
    detector = finllm.PiiDetector()
    masked, vault = detector.mask(CLIENT)
    assert masked == "客户身份证号<ID_1>，手机<PHONE_1>"
    assert vault.unmask(masked) == CLIENT
    assert vault.unmask("<PHONE_1> 已核实, <ID_9> unknown") == "13800138000 已核实, <ID_9> unknown"
    assert vault.placeholders() == ["<ID_1>", "<PHONE_1>"]
    assert vault.get("<ID_1>") == RAW_ID and vault.get("<CARD_1>") is None
    assert len(vault) == 2
    # Neither repr shows the personal data.
    assert RAW_ID not in repr(vault)
    assert all(RAW_ID not in repr(e) for e in detector.detect(CLIENT))


def test_entity_offsets_index_the_python_string():
    # Characters of 1, 3 and 4 UTF-8 bytes (and 2 UTF-16 units) before and between identifiers.
    text = "📈 é 客户 " + CLIENT + " 📉 card 6222 0212 3456 7890 128 mail a.b@example.com"
    entities = finllm.PiiDetector().detect(text)
    assert [e.kind for e in entities] == ["cn_resident_id", "cn_mobile", "credit_card", "email"]
    for e in entities:
        assert text[e.start : e.end] == e.text
        assert 0.5 <= e.confidence <= 1.0
    assert entities[0].text == RAW_ID and entities[2].detail == "UnionPay"


def test_kinds_threshold_and_keyed_redaction():
    only_phones = finllm.PiiDetector(kinds=["cn_mobile"])
    assert [e.kind for e in only_phones.detect(CLIENT)] == ["cn_mobile"]
    assert only_phones.kinds == ["cn_mobile"]
    assert finllm.PiiDetector(threshold=0.9).threshold == pytest.approx(0.9)
    assert finllm.PiiDetector().redact(CLIENT) == "客户身份证号[ID]，手机[PHONE]"
    keyed = finllm.PiiDetector(redaction_key=b"k" * 32).redact(CLIENT)
    assert keyed.startswith("客户身份证号[ID:") and RAW_ID not in keyed
    assert keyed == finllm.PiiDetector(redaction_key=b"k" * 32).redact(CLIENT)
    assert keyed != finllm.PiiDetector(redaction_key=b"j" * 32).redact(CLIENT)


# ---- policy --------------------------------------------------------------------------------------


def test_default_policy_blocks_and_allows():
    policy = finllm.Policy.default()
    blocked = policy.check("This fund offers guaranteed returns.")
    assert blocked.blocked and blocked.verdict == "block"
    assert blocked.text == "This fund offers "
    first = blocked.matches[0]
    assert first.action == "block" and first.category == "guaranteed_return"
    assert first.rule_id in policy.rule_ids()
    allowed = policy.check("Bonds carry interest-rate risk.")
    assert not allowed.blocked and allowed.verdict == "allow"
    assert allowed.matches == [] and allowed.text == "Bonds carry interest-rate risk."


def test_rule_match_offsets_are_characters(tmp_path):
    pack = tmp_path / "pack.toml"
    pack.write_text(
        'disclaimer = "Not advice."\n'
        '[[rules]]\nid = "p.flag"\ncategory = "unlicensed_advice"\naction = "append_disclaimer"\n'
        'keywords = ["买入"]\n',
        encoding="utf-8",
    )
    policy = finllm.Policy.from_file(pack)
    text = "📈 建议买入 now"
    decision = policy.check(text)
    assert decision.verdict == "append_disclaimer" and decision.disclaimers == ["Not advice."]
    (m,) = decision.matches
    assert text[m.start : m.end] == m.matched == "买入"
    assert text.encode()[m.byte_start : m.byte_end].decode() == "买入"
    merged = policy.merge(finllm.Policy.default())
    assert merged.rule_ids()[0] == "p.flag" and len(merged.rule_ids()) == 1 + len(finllm.Policy.default().rule_ids())


# ---- audit log -----------------------------------------------------------------------------------


def test_guarded_generations_are_audited(smollm2, tmp_path):
    path = tmp_path / "audit.log"
    log = finllm.AuditLog(path)
    guard = finllm.Guard(mask_pii=True, policy=finllm.Policy.default(), audit=log)
    first = smollm2.generate(CLIENT, guard=guard, max_tokens=8, caller_id="desk-7", source_ids=["doc-1"])
    second = smollm2.generate(CLIENT, guard=guard, max_tokens=8, request_id="r-2")
    assert (first.audit_seq, second.audit_seq) == (1, 2)
    assert second.request_id == "r-2" and first.request_id
    assert log.head() == (2, second.audit_hash)
    assert first.masked_prompt == "客户身份证号<ID_1>，手机<PHONE_1>"
    assert [e.kind for e in first.entities] == ["cn_resident_id", "cn_mobile"]
    assert first.decision is not None and first.decision.verdict in ("allow", "flag", "append_disclaimer")

    report = finllm.audit_verify(path, expected_head=log.head())
    assert report.ok and report.records == 2 and report.last_seq == 2
    assert report.last_hash == second.audit_hash and report.issues == []
    assert RAW_ID.encode() not in path.read_bytes()
    assert "13800138000".encode() not in path.read_bytes()

    records = finllm.audit_records(path)
    assert [r["seq"] for r in records] == [1, 2]
    r = records[0]
    assert (r["caller_id"], r["source_ids"], r["masked_prompt"]) == ("desk-7", ["doc-1"], first.masked_prompt)
    assert r["finish_reason"] == first.finish_reason and r["error"] is None
    assert r["sampling"]["max_tokens"] == 8 and len(r["model_sha256"]) == 64
    assert records[1]["request_id"] == "r-2"

    # An edited byte is found, and reported where it is.
    data = bytearray(path.read_bytes())
    data[len(data) - 10] ^= 0x01
    path.write_bytes(bytes(data))
    bad = finllm.audit_verify(path)
    assert not bad.ok
    kind, record, file, offset, detail = bad.issues[0]
    assert kind == "corrupt" and record == 2 and pathlib.Path(file) == path and offset > 0 and detail


def test_hmac_chain(smollm2, tmp_path):
    path = tmp_path / "keyed.log"
    key = b"0123456789abcdef0123456789abcdef"
    guard = finllm.Guard(audit=finllm.AuditLog(path, hmac_key=key, fsync="every_record"))
    smollm2.generate("Bonds", guard=guard, max_tokens=2)
    assert finllm.audit_verify(path, hmac_key=key).ok
    without_key = finllm.audit_verify(path)
    assert not without_key.ok and without_key.issues[0][0] == "key_required"
    assert finllm.audit_verify(path, hmac_key=b"x" * 32).issues[0][0] == "hash_mismatch"
    assert not finllm.audit_verify(path, hmac_key=key, expected_head=(2, "00" * 32)).ok


# ---- guard ---------------------------------------------------------------------------------------


def test_the_model_sees_the_masked_prompt(smollm2):
    guarded = smollm2.generate(CLIENT, guard=finllm.Guard(mask_pii=finllm.PiiDetector()), max_tokens=12)
    plain = smollm2.generate(guarded.masked_prompt, max_tokens=12)
    assert guarded.prompt_ids == plain.prompt_ids == smollm2.tokenize("客户身份证号<ID_1>，手机<PHONE_1>")
    assert guarded.ids == plain.ids
    assert guarded.text == plain.text == guarded.generation.text
    assert guarded.decision is None and guarded.audit_seq is None and guarded.audit_hash is None


def test_a_blocked_phrase_never_reaches_the_caller(smollm2):
    free = smollm2.generate(PROMPT, max_tokens=40)
    middle = len(free.text) // 2
    phrase = free.text[middle : middle + 10]
    cut = free.text.lower().index(phrase.lower())
    assert len(phrase) == 10 and cut > 0
    guard = finllm.Guard(policy=block_policy(phrase))

    out = smollm2.generate(PROMPT, guard=guard, max_tokens=40)
    assert out.finish_reason == "blocked"
    assert out.text == free.text[:cut]
    assert out.decision.blocked and out.decision.matches[0].rule_id == "test.block"
    assert out.decision.matches[0].start is None  # the raw output the offsets refer to is not returned
    assert out.ids == free.ids[: len(out.ids)]

    it = smollm2.stream(PROMPT, guard=guard, max_tokens=40)
    assert it.result is None
    tokens = list(it)
    assert "".join(t.text for t in tokens) == free.text[:cut]
    assert tokens[-1].finish_reason == "blocked"
    assert all(t.finish_reason is None for t in tokens[:-1])
    assert isinstance(it.result, finllm.GuardedGeneration)
    assert it.result.finish_reason == "blocked" and it.result.text == out.text


def test_streams_end_with_their_result(smollm2, tmp_path):
    path = tmp_path / "audit.log"
    guard = finllm.Guard(mask_pii=True, audit=finllm.AuditLog(path))
    it = smollm2.stream(CLIENT, guard=guard, max_tokens=6)
    tokens = list(it)
    result = it.result
    # A stream: an opened record (1) durable before the first token, the closing one (2).
    assert result.audit_seq == 2 and result.finish_reason == tokens[-1].finish_reason == "length"
    opened, closed = finllm.audit_records(path)
    assert (opened["phase"], closed["phase"], closed["opened_seq"]) == ("opened", "closed", 1)
    assert "".join(t.text for t in tokens) == result.text
    assert [t.id for t in tokens] == result.ids
    assert list(it) == [] and it.result is result

    # Model.stream gives its Generation the same way.
    plain = smollm2.stream(PROMPT, max_tokens=4)
    assert [t.id for t in plain] == plain.result.ids == smollm2.generate(PROMPT, max_tokens=4).ids
    assert isinstance(plain.result, finllm.Generation)


def test_chat_masks_every_message(smollm2, tmp_path):
    guard = finllm.Guard(mask_pii=True, audit=finllm.AuditLog(tmp_path / "audit.log"))
    msgs = [("system", "Answer briefly."), {"role": "user", "content": "我的手机13800138000，身份证" + RAW_ID}]
    out = smollm2.chat(msgs, guard=guard, max_tokens=6)
    expected = smollm2.apply_chat_template([msgs[0], ("user", "我的手机<PHONE_1>，身份证<ID_1>")])
    assert out.masked_prompt == expected
    assert out.prompt_ids == smollm2.tokenize(expected)
    assert [(e.start, e.end) for e in out.entities] == [(4, 15), (19, 37)]
    tokens = list(smollm2.stream(messages=msgs, guard=guard, max_tokens=6))
    assert "".join(t.text for t in tokens) == out.text


def test_dropping_a_guarded_stream_records_a_cancelled_request(smollm2, tmp_path):
    path = tmp_path / "audit.log"
    guard = finllm.Guard(audit=finllm.AuditLog(path))
    it = smollm2.stream(PROMPT, guard=guard, max_tokens=200)
    next(it)
    del it
    deadline = time.monotonic() + 30
    while len(finllm.audit_records(path)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    opened, record = finllm.audit_records(path)
    assert opened["phase"] == "opened" and record["phase"] == "closed"
    assert record["finish_reason"] == "cancelled"
    assert finllm.audit_verify(path).ok


def test_threads_share_one_guard_and_one_log(smollm2, tmp_path):
    path = tmp_path / "audit.log"
    log = finllm.AuditLog(path)
    guard = finllm.Guard(mask_pii=True, policy=finllm.Policy.default(), audit=log)
    prompts = [f"客户{i}的手机1380013800{i}，利率？" for i in range(4)]
    expected = [smollm2.generate(finllm.PiiDetector().mask(p)[0], max_tokens=6).ids for p in prompts]
    results = [None] * len(prompts)
    failures = []

    def work(i):
        try:
            results[i] = smollm2.generate(prompts[i], guard=guard, max_tokens=6, request_id=f"t-{i}")
        except Exception as e:  # surfaced below: an exception in a thread would be lost
            failures.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert [r.ids for r in results] == expected
    assert sorted(r.audit_seq for r in results) == [1, 2, 3, 4]
    records = finllm.audit_records(path)
    assert sorted(r["request_id"] for r in records) == [f"t-{i}" for i in range(4)]
    report = finllm.audit_verify(path)
    assert report.ok and report.records == 4


def _smoothed_kl(recent, reference, vocab, alpha=0.5):
    """D(recent || reference) summed over the whole vocabulary: the oracle for drift_kl."""
    from collections import Counter

    rc, qc = Counter(recent), Counter(reference)
    p_den, q_den = len(recent) + alpha * vocab, len(reference) + alpha * vocab
    kl = 0.0
    for token in range(vocab):
        p = (rc[token] + alpha) / p_den
        q = (qc[token] + alpha) / q_den
        kl += p * __import__("math").log(p / q)
    return kl


def test_drift_of_prompt_tokens(smollm2):
    window = 16
    guard = finllm.Guard(drift_vocab_size=smollm2.vocab_size, drift_window=window, drift_threshold=0.5)
    assert smollm2.generate("hello", guard=guard, max_tokens=1).drift_kl is None
    first = "The central bank held its policy rate steady while bond yields rose across the curve."
    second = "央行宣布下调存款准备金率0.5个百分点，释放长期资金。"
    smollm2.generate(first, guard=guard, max_tokens=1)
    out = smollm2.generate(second, guard=guard, max_tokens=1)
    stream = smollm2.tokenize("hello") + smollm2.tokenize(first) + smollm2.tokenize(second)
    reference, recent = stream[:window], stream[window:][-window:]
    expected = _smoothed_kl(recent, reference, smollm2.vocab_size)
    assert out.drift_kl == pytest.approx(expected, rel=1e-9)
    assert out.drifting == (expected >= 0.5)
    assert smollm2.generate("hello", guard=finllm.Guard(), max_tokens=1).drifting is None


def test_repr_html_escapes_the_answer(smollm2):
    out = smollm2.generate(CLIENT, guard=finllm.Guard(mask_pii=True), max_tokens=4, request_id="<r&1>")
    html = out._repr_html_()
    assert html.startswith("<div><pre") and "request &lt;r&amp;1&gt;" in html
    assert "2 personal identifiers masked" in html and "not audited" in html
    assert "GuardedGeneration(" in repr(out)


# ---- errors --------------------------------------------------------------------------------------


def test_policy_errors(tmp_path):
    with pytest.raises(errors.PolicyError, match="invalid TOML"):
        finllm.Policy.from_toml("[[rules]\nid = ")
    with pytest.raises(errors.PolicyError, match="unbounded length"):
        finllm.Policy.from_toml('[[rules]]\nid = "r"\ncategory = "x"\naction = "block"\nregex = "a+"\n')
    with pytest.raises(errors.PolicyError, match="more than its max_len 2"):
        finllm.Policy.from_toml('[[rules]]\nid = "r"\ncategory = "x"\naction = "block"\nregex = "a{3}"\nmax_len = 2\n')
    with pytest.raises(errors.PolicyError, match="appears twice"):
        finllm.Policy.default().merge(finllm.Policy.default())
    with pytest.raises(errors.PolicyError, match="cannot read"):
        finllm.Policy.from_file(tmp_path / "missing.toml")
    with pytest.raises(TypeError):
        finllm.Policy.from_toml(b"name = 'x'")


def test_a_torn_tail_is_cut_off_with_a_warning(tmp_path):
    path = tmp_path / "audit.log"
    log = finllm.AuditLog(path)
    assert log.truncated_bytes == 0
    del log
    with open(path, "ab") as f:
        f.write(b"FLAR\x00")  # a frame cut short by a crash
    with pytest.warns(UserWarning, match="torn last record"):
        log = finllm.AuditLog(path)
    assert log.truncated_bytes == 5
    assert finllm.audit_verify(path).ok


def test_special_files_are_refused(tmp_path):
    with pytest.raises(errors.AuditError, match="not a regular file"):
        finllm.AuditLog("/dev/null")
    (tmp_path / "target.log").write_bytes(b"")
    (tmp_path / "link.log").symlink_to(tmp_path / "target.log")
    with pytest.raises(errors.AuditError, match="symbolic link"):
        finllm.AuditLog(tmp_path / "link.log")


def test_audit_errors(tmp_path):
    with pytest.raises(errors.AuditError):
        finllm.AuditLog(tmp_path / "no" / "such" / "dir" / "audit.log")
    with pytest.raises(errors.AuditError, match="no such audit log"):
        finllm.audit_verify(tmp_path / "missing.log")
    with pytest.raises(errors.AuditError, match="max_file_bytes"):
        finllm.AuditLog(tmp_path / "a.log", max_file_bytes=10)
    with pytest.raises(errors.InvalidArgument, match="fsync"):
        finllm.AuditLog(tmp_path / "a.log", fsync="sometimes")
    with pytest.raises(TypeError):
        finllm.AuditLog(tmp_path / "a.log", hmac_key="a text key")
    with pytest.raises(TypeError):
        finllm.audit_verify(tmp_path / "a.log", expected_head="1:abc")
    assert issubclass(errors.AuditPoisonedError, errors.AuditError)
    assert issubclass(errors.PolicyError, errors.FinllmError)


def test_argument_errors(smollm2, tmp_path):
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(errors.InvalidArgument, match="threshold"):
            finllm.PiiDetector(threshold=bad)
    with pytest.raises(errors.InvalidArgument, match="unknown kind 'passport'"):
        finllm.PiiDetector(kinds=["cn_mobile", "passport"])
    with pytest.raises(errors.InvalidArgument, match="16 bytes"):
        finllm.PiiDetector(redaction_key=b"short")
    with pytest.raises(TypeError):
        finllm.PiiDetector(threshold="high")
    with pytest.raises(TypeError):
        finllm.PiiDetector(kinds="cn_mobile")
    with pytest.raises(TypeError):
        finllm.PiiDetector().detect(42)
    with pytest.raises(TypeError, match="mask_pii must be a bool or a PiiDetector"):
        finllm.Guard(mask_pii="yes")
    with pytest.raises(TypeError):
        finllm.Guard(policy="default")
    with pytest.raises(TypeError):
        finllm.Guard(audit=str(tmp_path / "audit.log"))
    guard = finllm.Guard()
    with pytest.raises(TypeError):
        smollm2.generate("x", guard="not a guard")
    with pytest.raises(TypeError):
        smollm2.generate("x", guard=guard, source_ids="doc-1")
    with pytest.raises(errors.InvalidArgument, match="top_p"):
        smollm2.generate("x", guard=guard, top_p=2.0)
    with pytest.raises(errors.ContextOverflowError):
        list(smollm2.stream("x", guard=guard, max_tokens=10**6))
    with pytest.raises(errors.InvalidArgument, match="role"):
        smollm2.chat([{"content": "no role"}], guard=guard)


# ---- stubs ---------------------------------------------------------------------------------------

COMPLIANCE = ["Entity", "Vault", "PiiDetector", "RuleMatch", "Decision", "Policy", "AuditLog", "VerifyReport",
              "GuardedGeneration", "Guard", "TokenIterator"]


def _stub_docs() -> dict:
    """(class or None, name) -> docstring (or None) of every def and documented attribute in the stub."""
    tree = ast.parse((pathlib.Path(finllm.__file__).parent / "_finllm.pyi").read_text())
    docs = {}

    def collect(body, owner):
        for i, node in enumerate(body):
            if isinstance(node, ast.FunctionDef):
                docs[(owner, node.name)] = ast.get_docstring(node)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                nxt = body[i + 1] if i + 1 < len(body) else None
                doc = nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
                docs[(owner, node.target.id)] = doc
            elif isinstance(node, ast.ClassDef):
                docs[(node.name, None)] = ast.get_docstring(node)
                collect(node.body, node.name)

    collect(tree.body, None)
    return docs


def test_compliance_stubs_and_docstrings_match_the_native_module():
    docs = _stub_docs()
    clean = lambda d: inspect.cleandoc(d) if d else None  # noqa: E731
    for name in COMPLIANCE:
        cls = getattr(_finllm, name)
        assert (name, None) in docs, f"{name} missing from stub"
        assert clean(cls.__doc__) == clean(docs[(name, None)]), name
        for member in vars(cls):
            if member.startswith("__"):
                continue
            assert (name, member) in docs, f"{name}.{member} missing from stub"
            assert clean(getattr(cls, member).__doc__) == clean(docs[(name, member)]), f"{name}.{member}"
            # Defaults are shown as Python literals, as in the stub.
            assert "..." not in (getattr(getattr(cls, member), "__text_signature__", None) or ""), f"{name}.{member}"
        assert "..." not in (cls.__text_signature__ or ""), name
    for func in (_finllm.audit_verify, _finllm.audit_records):
        assert clean(func.__doc__) == clean(docs[(None, func.__name__)])
    for name in finllm.__all__:
        assert hasattr(finllm, name)
