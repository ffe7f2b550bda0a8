"""Type stubs for the native module finllm._finllm."""

from os import PathLike
from typing import Iterator, Mapping, Optional, Sequence, Tuple, Union

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

class Model:
    """A loaded model. Thread-safe: several Python threads may generate from one model at once."""

    @staticmethod
    def load(
        path: Union[str, PathLike[str]],
        *,
        threads: Optional[int] = None,
        tokenizer_json: Optional[Union[str, PathLike[str]]] = None,
    ) -> Model:
        """Load a .gguf file or an HF safetensors directory."""
    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        top_logits: int = 0,
    ) -> Generation:
        """Generate a continuation of raw prompt text (special tokens parsed, no chat template)."""
    def stream(
        self,
        prompt: str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
    ) -> TokenIterator:
        """Like generate(), but an iterator of Token as they are produced."""
    def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
    ) -> Generation:
        """Answer a conversation with the model's chat template."""
    def chat_stream(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
    ) -> TokenIterator:
        """Like chat(), but an iterator of Token."""
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
