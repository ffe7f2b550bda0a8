"""Type stubs for the native module finllm._finllm."""

from os import PathLike
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Union

__version__: str
build_info: str

Message = Union[Mapping[str, str], Tuple[str, str]]

class FinllmError(Exception):
    """Base class of every finllm error."""

class ModelLoadError(FinllmError):
    """A model file could not be read, parsed or used."""

class TokenizerError(FinllmError):
    """The tokenizer could not be built or used."""

class ChatTemplateError(FinllmError):
    """The chat template failed to parse or render."""

class InvalidArgument(FinllmError):
    """An argument is out of range."""

class ContextOverflowError(InvalidArgument):
    """The prompt plus max_tokens exceed the model's context length."""

class BackendError(FinllmError):
    """The tensor backend failed."""

class DeviceError(FinllmError):
    """The requested device cannot be used: no CUDA in this build, no such GPU, or no driver."""

class PolicyError(FinllmError):
    """A compliance policy (TOML rule pack) is invalid or cannot be read."""

class AuditError(FinllmError):
    """The audit log cannot be opened, read or appended to."""

class AuditPoisonedError(AuditError):
    """An earlier write of the audit log failed, so it refuses all further records."""

class EngineBusyError(FinllmError):
    """The engine's queue is full; nothing was queued. Retry later or pass wait_s."""

class DeadlineExceededError(FinllmError):
    """The request's deadline passed before it finished."""

class EngineError(FinllmError):
    """The engine could not serve the request (its scheduler stopped, or a batched step failed)."""

class DocumentError(FinllmError):
    """A document cannot be read as text (type, UTF-8, a malformed PDF or one without a text layer, size)."""

class IndexFileError(FinllmError):
    """An index file is corrupt, truncated or of another version: rebuild it."""

class RetrieverError(FinllmError):
    """A retriever failed (an external store, a retrieval callback, or an index built by another embedder)."""

class Generation:
    """The result of a generation."""

    text: str
    ids: list[int]
    prompt_ids: list[int]
    finish_reason: str
    """One of "eos", "length", "stop", "cancelled", "blocked" (by an output policy)."""
    steps: list[list[tuple[int, float]]]
    """Top-k (id, logit) before each generated token, when top_logits > 0."""
    prefill_ms: float
    decode_ms: float
    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of decoding."""
    def _repr_html_(self) -> str: ...

class Token:
    """One streamed step: text holds whole characters only, never part of a stop string."""

    id: int
    text: str
    finish_reason: Optional[str]

class TokenIterator(Iterator[Token]):
    """Iterator over a generation running on its own thread; dropping it stops the generation."""

    def __iter__(self) -> TokenIterator: ...
    def __next__(self) -> Token: ...
    @property
    def result(self) -> Optional[Union[Generation, GuardedGeneration]]:
        """The final result (Generation, or GuardedGeneration for a guarded stream) once the
        iterator is exhausted; None before, and after an error or an early drop."""

class Model:
    """A loaded model. Thread-safe: several Python threads may generate from one model at once."""

    @staticmethod
    def load(
        path: Union[str, PathLike[str]],
        *,
        threads: Optional[int] = None,
        tokenizer_json: Optional[Union[str, PathLike[str]]] = None,
        device: str = "cpu",
    ) -> Model:
        """Load a .gguf file or an HF safetensors directory, to run on `device` ("cpu",
        "cuda:N" or "auto")."""
    def generate(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
    ) -> Union[Generation, GuardedGeneration]:
        """Generate a continuation of raw prompt text (special tokens parsed, no chat template), or
        with `messages=` an answer to a conversation. With `guard=` the request runs under the
        guard's controls and the answer is a GuardedGeneration. Keyword options: max_tokens,
        temperature, top_k, top_p, min_p, repetition_penalty, seed, stop, top_logits, request_id,
        caller_id, source_ids, adapter, deadline_s."""
    def chat(
        self,
        messages: Sequence[Message],
        *,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
    ) -> Union[Generation, GuardedGeneration]:
        """Answer a conversation with the model's chat template: generate(messages=messages, ...)."""
    def stream(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
    ) -> TokenIterator:
        """Like generate(), but an iterator of Token as they are produced; its .result is what
        generate() would return, once the iterator is exhausted. A guarded stream releases its
        first token only once its opened audit record is durable, and its last once the closing
        one is."""
    def ask(
        self,
        question: str,
        *,
        retriever: Union[Index, PgStore, Callable[[Dict[str, Any]], Sequence[Mapping[str, Any]]]],
        guard: Optional[Guard] = None,
        explain: Union[None, str, Mapping[str, Any]] = None,
        k: int = 4,
        mode: str = "hybrid",
        context_tokens: int = 1024,
        entitlements: Optional[Sequence[str]] = None,
        tickers: Optional[Sequence[str]] = None,
        doc_types: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        date_from: Optional[str] = None,
        date_to: Optional[str] = None,
        **options: Any,
    ) -> Answer:
        """Answer `question` from the passages `retriever` finds (a finllm.Index, or a callable
        taking a query dict -- text, k, mode and the filter -- and returning passage dicts with at
        least `source` and `text`): they go into the prompt as numbered sources and come back as
        the answer's citations. Passages outside the filter are dropped whoever returned them.
        With `explain=` a method name or a dict of explain() options, the answer's `explanation`
        ranks its sources by how much they drove it. `options` are those of generate()."""
    def explain(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        guard: Optional[Guard] = None,
        caller_id: Optional[str] = None,
        method: str = "occlusion",
        granularity: str = "word",
        target: Optional[str] = None,
        max_tokens: int = 32,
        target_tokens: Optional[Tuple[int, int]] = None,
        samples: int = 0,
        held_out: int = 16,
        seed: int = 0,
        batch: int = 8,
        segments: Optional[Sequence[Tuple[str, int, int]]] = None,
        layer: Optional[int] = None,
    ) -> Attribution:
        """Explain an answer to `prompt` (raw text) or `messages` (rendered with the chat
        template): attribute it to the prompt's units. method: "occlusion", "shapley",
        "surrogate", "attention", "rollout", "ig", "saliency" or "input_x_gradient";
        samples: permutations, ablations or integrated-gradients steps; granularity: "token", "word" or "sentence";
        target: the answer to explain (default: the greedy answer of max_tokens tokens);
        segments: (label, start, end) byte ranges of the prompt's text, each a unit;
        layer: for "attention", the layer that scores the units (default the last).
        With guard: the answer is a guarded request's (for caller_id), the prompt as the model
        saw it is explained, and with an audit log the explanation is recorded after the
        request's record (audit_seq)."""
    def apply_chat_template(self, messages: Sequence[Message]) -> str:
        """The prompt text the chat template renders for `messages`."""
    def tokenize(self, text: str) -> list[int]:
        """Token ids of raw text (special tokens parsed, BOS as the model says)."""
    def detokenize(self, ids: Sequence[int]) -> str:
        """Text of token ids (control tokens skipped)."""
    @property
    def architecture(self) -> str: ...
    @property
    def vocab_size(self) -> int: ...
    @property
    def context_length(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def device(self) -> str:
        """Where the model runs: "cpu" or "cuda:N"."""

# ---- compliance --------------------------------------------------------------------------------

class Entity:
    """One personal identifier found in a text."""

    kind: str
    """"cn_resident_id", "cn_mobile", "cn_landline", "bank_card", "credit_card", "uscc", "email",
    "iban", "us_ssn", "ipv4" or "ipv6"."""
    start: int
    """Character offset in the text (text[start:end] is the identifier)."""
    end: int
    confidence: float
    """In [0, 1]; at least the detector's threshold."""
    text: str
    """The identifier as written (with its separators)."""
    detail: Optional[str]
    """Extra facts, e.g. the card network ("Visa")."""

class Vault:
    """Placeholders handed to the model (`<ID_1>`) and the values they stand for, for one text."""

    def unmask(self, text: str) -> str:
        """Put the original values back for every placeholder this vault issued; unknown ones stay."""
    def get(self, placeholder: str) -> Optional[str]:
        """The original value behind one placeholder, e.g. vault.get("<CARD_1>")."""
    def placeholders(self) -> list[str]:
        """The placeholders issued, sorted."""
    def __len__(self) -> int: ...

class PiiDetector:
    """Finds personal identifiers (Chinese resident IDs, phones, bank and credit cards, USCC,
    e-mail, IBAN, US SSN, IP addresses) with check-digit validation and context scoring.
    Thread-safe."""

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        kinds: Optional[Sequence[str]] = None,
        redaction_key: Optional[bytes] = None,
        context_window: int = 24,
    ) -> None: ...
    def detect(self, text: str) -> list[Entity]:
        """The identifiers in `text`, in text order, without overlaps."""
    def mask(self, text: str) -> tuple[str, Vault]:
        """Replace identifiers by numbered placeholders; the vault maps them back."""
    def redact(self, text: str) -> str:
        """Irreversibly remove identifiers, for logs: "[ID]", or "[ID:hash]" with a redaction key."""
    @property
    def threshold(self) -> float: ...
    @property
    def kinds(self) -> list[str]: ...

class RuleMatch:
    """One rule that fired."""

    rule_id: str
    category: str
    action: str
    """"flag", "append_disclaimer", "redact" or "block"."""
    start: Optional[int]
    """Character offset in the checked text; None for a guarded generation, whose checked text
    (the model's raw output) is not returned."""
    end: Optional[int]
    byte_start: int
    """UTF-8 byte offset in the checked text, as the audit log records it."""
    byte_end: int
    matched: str
    score: Optional[float]
    """Cosine similarity, for semantic rules."""

class Decision:
    """The outcome of checking a text (or a generated answer) against a policy."""

    verdict: str
    """The strongest action that fired: "allow", "flag", "append_disclaimer", "redact" or "block"."""
    matches: list[RuleMatch]
    disclaimers: list[str]
    notes: list[str]
    text: str
    """The text the caller may show: redactions applied, disclaimers appended; on a block, only
    the text before the blocked phrase."""
    @property
    def blocked(self) -> bool:
        """Whether a rule blocked the text."""

class Policy:
    """A compiled set of output rules from TOML rule packs. Thread-safe."""

    @staticmethod
    def default() -> Policy:
        """The English and Chinese rule packs shipped with finllm."""
    @staticmethod
    def from_file(path: Union[str, PathLike[str]]) -> Policy:
        """Read a TOML rule pack file."""
    @staticmethod
    def from_toml(text: str) -> Policy:
        """Parse a TOML rule pack."""
    def merge(self, other: Policy) -> Policy:
        """This policy's rules followed by `other`'s (rule ids must stay unique)."""
    def check(self, text: str) -> Decision:
        """Check a whole text."""
    def rule_ids(self) -> list[str]:
        """Rule ids in order."""

class AuditLog:
    """An append-only, hash-chained audit log. Thread-safe: share one among threads and guards."""

    def __init__(
        self,
        path: Union[str, PathLike[str]],
        *,
        fsync: str = "group",
        hmac_key: Optional[bytes] = None,
        max_file_bytes: int = 67108864,  # 64 MiB
        checkpoint_every: int = 64,
    ) -> None:
        """Open (or create) the log. A torn last record from an interrupted write is cut off and
        reported with a UserWarning (and in truncated_bytes). Symbolic links, FIFOs and devices
        are refused with AuditError. checkpoint_every: records between checkpoints in
        PATH.checkpoints (0: none), which let audit_verify detect a log cut short."""
    @property
    def path(self) -> Path:
        """The log's first file."""
    def head(self) -> tuple[int, str]:
        """Sequence number and chain hash (hex) of the last record: keep it outside the log to
        detect a cut-off end with audit_verify(expected_head=...)."""
    @property
    def poisoned(self) -> bool:
        """Whether an earlier failed write closed the log."""
    @property
    def truncated_bytes(self) -> int:
        """Bytes of a torn last record (from a crash) cut off when the log was opened."""

class VerifyReport:
    """The result of audit_verify."""

    ok: bool
    records: int
    first_seq: Optional[int]
    last_seq: Optional[int]
    last_hash: Optional[str]
    files: list[Path]
    issues: list[tuple[str, int, Path, int, str]]
    """(kind, record, file, offset, detail), e.g. ("chain_broken", 7, Path("audit.log"), 4096, "...")."""

def audit_verify(
    path: Union[str, PathLike[str]],
    *,
    hmac_key: Optional[bytes] = None,
    expected_head: Optional[tuple[int, str]] = None,
) -> VerifyReport:
    """Verify the audit log whose first file is `path` (and its rotated files)."""

def audit_records(path: Union[str, PathLike[str]]) -> list[dict[str, Any]]:
    """Every record of the audit log at `path` that passes its checksum, as dicts, in order. For
    investigations; use audit_verify to judge integrity."""

class GuardedGeneration:
    """The answer to a guarded request, with what the guard did."""

    generation: Generation
    request_id: str
    masked_prompt: str
    """The prompt as the model saw it (personal data replaced by placeholders)."""
    entities: list[Entity]
    """Personal data found in the prompt (offsets refer to the original prompt, or to each
    message's content for chat)."""
    decision: Optional[Decision]
    """The output policy's decision, when the guard has a policy."""
    audit_seq: Optional[int]
    """Sequence number of the audit record, when the guard has an audit log."""
    audit_hash: Optional[str]
    drift_kl: Optional[float]
    """KL divergence (nats) of recent prompts from the reference window, when the guard monitors
    drift and both windows hold tokens."""
    drifting: Optional[bool]
    """Whether drift_kl reached the guard's threshold."""
    @property
    def text(self) -> str:
        """What the caller may see: filtered by the policy (and unmasked if configured)."""
    @property
    def ids(self) -> list[int]: ...
    @property
    def prompt_ids(self) -> list[int]: ...
    @property
    def finish_reason(self) -> str:
        """As Generation.finish_reason; "blocked" when the policy stopped the answer."""
    def _repr_html_(self) -> str: ...

class Guard:
    """Compliance controls around generation: mask personal data before the model sees it, filter
    the answer through a policy, and record every request in an audit log before answering.
    Give it to a request: `model.generate(prompt, guard=guard)` (or Engine's, or stream()).
    Thread-safe: share one guard among threads, models and engines."""

    def __init__(
        self,
        *,
        mask_pii: Union[bool, PiiDetector] = False,
        unmask_output: bool = False,
        policy: Optional[Policy] = None,
        audit: Optional[AuditLog] = None,
        drift_vocab_size: Optional[int] = None,
        drift_window: int = 4096,
        drift_threshold: float = 0.5,
    ) -> None: ...

class EngineStream:
    """A request's stream of Token from an Engine; iterate it, or `async for` it. Dropping it, or
    cancel(), stops the request."""

    def __iter__(self) -> EngineStream: ...
    def __next__(self) -> Token: ...
    def __aiter__(self) -> EngineStream: ...
    async def __anext__(self) -> Token: ...
    def next_token(self) -> Optional[Token]:
        """The next Token, or None at the end."""
    def cancel(self) -> None:
        """Stop the request before its next step; iteration then ends."""
    @property
    def result(self) -> Optional[Union[Generation, GuardedGeneration]]:
        """What generate() would have returned, once the stream has ended normally; None before."""

class Engine:
    """One model served to many callers: requests from any thread or asyncio task join one
    running batch between forward steps. Thread-safe; the GIL is released while waiting."""

    def __init__(
        self,
        model: Model,
        *,
        max_running: int = 16,
        step_tokens: int = 128,
        kv_budget_tokens: Optional[int] = None,
        kv_budget_bytes: Optional[int] = None,
        queue_requests: int = 256,
        queue_tokens: int = 1048576,
        prefix_min_tokens: int = 32,
        prefix_max_entries: int = 16,
        short_prompt_tokens: int = 32,
    ) -> None: ...
    def generate(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
        wait_s: Optional[float] = None,
    ) -> Union[Generation, GuardedGeneration]:
        """Model.generate through the engine's running batch (the same arguments, the same answer);
        also `deadline_s`, the time the whole request may take, and `wait_s`, how long to wait
        for room in a full queue (default: EngineBusyError at once)."""
    def chat(
        self,
        messages: Sequence[Message],
        *,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
        wait_s: Optional[float] = None,
    ) -> Union[Generation, GuardedGeneration]:
        """Answer a conversation: generate(messages=messages, ...)."""
    def stream(
        self,
        prompt: Optional[str] = None,
        *,
        messages: Optional[Sequence[Message]] = None,
        guard: Optional[Guard] = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
        request_id: Optional[str] = None,
        caller_id: str = "",
        source_ids: Optional[Sequence[str]] = None,
        adapter: Optional[str] = None,
        deadline_s: Optional[float] = None,
        wait_s: Optional[float] = None,
    ) -> EngineStream:
        """Like generate(), but a stream of Token as they are produced (iterate it, or `async for`
        it); its .result is what generate() would return once it has ended."""
    def ask(
        self,
        question: str,
        *,
        retriever: Union[Index, PgStore, Callable[[Dict[str, Any]], Sequence[Mapping[str, Any]]]],
        guard: Optional[Guard] = None,
        explain: Union[None, str, Mapping[str, Any]] = None,
        k: int = 4,
        mode: str = "hybrid",
        context_tokens: int = 1024,
        entitlements: Optional[Sequence[str]] = None,
        tickers: Optional[Sequence[str]] = None,
        doc_types: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        date_from: Optional[str] = None,
        date_to: Optional[str] = None,
        **options: Any,
    ) -> Answer:
        """Through the engine: answer `question` from the passages `retriever` finds (a finllm.Index, or a callable
        taking a query dict -- text, k, mode and the filter -- and returning passage dicts with at
        least `source` and `text`): they go into the prompt as numbered sources and come back as
        the answer's citations. Passages outside the filter are dropped whoever returned them.
        With `explain=` a method name or a dict of explain() options, the answer's `explanation`
        ranks its sources by how much they drove it. `options` are those of generate()."""
    def metrics(self) -> Dict[str, Any]:
        """Counters, gauges and latency percentiles (milliseconds) as a dict."""

class Embedder:
    """A sentence embedder (all-MiniLM-L6-v2 and other BERT-family sentence-transformers
    directories). Thread-safe; the GIL is released while it computes."""

    @staticmethod
    def load(path: Union[str, PathLike], *, threads: Optional[int] = None, quantize: Optional[str] = None) -> Embedder:
        """Load a sentence-transformers directory (config.json, model.safetensors, tokenizer.json).
        quantize="q8_0" quantizes the matrices but the query, key and value projections at load
        (faster, vectors within about 1e-3 of the float model's)."""
    @property
    def dim(self) -> int:
        """Length of every embedding."""
    def tokenize(self, text: str) -> list[int]:
        """The token ids the encoder sees for `text` ([CLS] ... [SEP], truncated)."""
    def embed(self, texts: list[str]) -> list[list[float]]:
        """One embedding (unit length for models that normalise) per text."""

class Index:
    """A document collection: chunks of a folder's files (.txt, .md, .html, .pdf) in a vector
    index and a BM25 index with their metadata (ticker, date, doc_type, entitlement labels);
    searched by vector, keyword or both fused; saved to one checksummed file. Thread-safe."""

    @staticmethod
    def create(*, embedder: Embedder, chunk_tokens: int = 128, overlap_tokens: int = 24) -> Index:
        """An empty index whose chunks `embedder` embeds."""
    @staticmethod
    def open(path: Union[str, PathLike[str]], *, embedder: Embedder) -> Index:
        """Reopen an index file written by save() or `finllm index`, with the embedder that built it."""
    def sync(
        self, directory: Union[str, PathLike[str]], *, metadata: Optional[Union[str, PathLike[str]]] = None
    ) -> Dict[str, Any]:
        """Make the index mirror `directory` (metadata from DIRECTORY/metadata.toml by default):
        new files added, changed ones replaced, vanished ones removed. Returns added, replaced,
        unchanged, removed, skipped, failed ({name: error}), chunks_added, chunks_removed."""
    def save(self, path: Union[str, PathLike[str]]) -> None:
        """Write the index to `path` atomically."""
    def __len__(self) -> int: ...
    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        entitlements: Optional[Sequence[str]] = None,
        tickers: Optional[Sequence[str]] = None,
        doc_types: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        date_from: Optional[str] = None,
        date_to: Optional[str] = None,
    ) -> list[Dict[str, Any]]:
        """The passages that best match `query`, best first: dicts with id, source, page, start,
        end, score, vector_score, keyword_score, text, context, ticker, date, doc_type, labels.
        `entitlements=None` is an unrestricted caller; a list shows only documents carrying one
        of its labels."""

class PgStore:
    """A collection in PostgreSQL with pgvector: the same chunks, filters and passages as an
    Index, in your own database; a retriever for ask(). Thread-safe (calls take turns on one
    connection; a broken connection is reopened). No TLS: keep the database on loopback or a
    trusted network."""

    def __init__(
        self, url: str, *, embedder: Embedder, table: str = "finllm_chunks", timeout: float = 30.0
    ) -> None:
        """Connect to `url` (postgresql://user@host:port/db), creating the pgvector extension and
        `table` when missing. `embedder` must be the one that builds the pushed indexes.
        Raises RetrieverError when the server cannot be reached or `table` holds another
        embedder's vectors."""
    def push(self, index: Index) -> Dict[str, Any]:
        """Make the table hold exactly `index`'s chunks, writing only the files that changed, in
        one transaction. Returns added, replaced, unchanged, removed (file names) and rows."""
    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        entitlements: Optional[Sequence[str]] = None,
        tickers: Optional[Sequence[str]] = None,
        doc_types: Optional[Sequence[str]] = None,
        sources: Optional[Sequence[str]] = None,
        date_from: Optional[str] = None,
        date_to: Optional[str] = None,
    ) -> list[Dict[str, Any]]:
        """Like Index.search; the filter runs inside PostgreSQL."""
    def __len__(self) -> int: ...
    def drop_tables(self) -> None:
        """Drop the table and everything pushed to it."""

class Answer:
    """An answer with its sources."""

    @property
    def text(self) -> str: ...
    @property
    def generation(self) -> Union[Generation, GuardedGeneration]: ...
    @property
    def citations(self) -> list[Dict[str, Any]]:
        """Every source in the prompt, in rank order: passage dicts with `number` and `cited`."""
    @property
    def explanation(self) -> Optional[Attribution]:
        """With `explain=`: the sources ranked by how much they drove the answer."""

class Attribution:
    """Why the model answered as it did: the prompt's units ranked by their attribution to the
    answer. In a notebook it shows its HTML report."""

    @property
    def method(self) -> str: ...
    @property
    def granularity(self) -> str: ...
    @property
    def prompt(self) -> str:
        """The text the units' spans point into (start/end in characters, byte_start/byte_end in bytes)."""
    @property
    def answer(self) -> str: ...
    @property
    def answer_tokens(self) -> list[str]: ...
    @property
    def target(self) -> Dict[str, Any]:
        """{"text", "start", "end"}: the answer tokens explained."""
    @property
    def units(self) -> list[Dict[str, Any]]:
        """Units ranked by score, best first: index, text, start, end (characters), byte_start, byte_end, tokens, score (and label)."""
    @property
    def matrix(self) -> list[list[float]]:
        """Units (prompt order) x answer tokens."""
    @property
    def base_logprobs(self) -> Optional[list[float]]: ...
    @property
    def surrogate(self) -> Optional[Dict[str, Any]]:
        """The surrogate's fit: ablations, held_out, intercept, lambda, lds."""
    @property
    def gradient(self) -> Optional[Dict[str, Any]]:
        """Gradient methods: weights, target_logprob, and for "ig" baseline_logprob,
        attribution_sum, completeness_error, uniform_completeness_error, steps."""
    @property
    def attention_layers(self) -> Optional[list[list[float]]]:
        """Attention methods: [layer][unit] (units in prompt order), each layer's head-mean
        attention from the target's predicting positions to the unit."""
    @property
    def audit_seq(self) -> Optional[int]:
        """For a guarded ask() with an audit log: the explanation record's sequence number."""
    @property
    def model_sha256(self) -> str: ...
    @property
    def parameters(self) -> Dict[str, Any]: ...
    @property
    def timings(self) -> Dict[str, Any]: ...
    def table(self) -> list[Dict[str, Any]]:
        """One row per unit in prompt order, for pandas.DataFrame(a.table())."""
    def scores_array(self) -> Any:
        """The units' scores in prompt order as a numpy array (needs numpy)."""
    def matrix_array(self) -> Any:
        """The units x answer-tokens matrix as a numpy array (needs numpy)."""
    def to_json(self) -> str: ...
    def to_html(self) -> str:
        """The self-contained HTML report."""
    def _repr_html_(self) -> str: ...
    def __len__(self) -> int: ...
