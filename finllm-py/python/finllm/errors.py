"""The exceptions finllm raises. Every one derives from :class:`FinllmError`."""

from finllm._finllm import (
    BackendError,
    ChatTemplateError,
    ContextOverflowError,
    FinllmError,
    InvalidArgument,
    ModelLoadError,
    TokenizerError,
)

__all__ = [
    "FinllmError",
    "ModelLoadError",
    "TokenizerError",
    "ChatTemplateError",
    "InvalidArgument",
    "ContextOverflowError",
    "BackendError",
]
