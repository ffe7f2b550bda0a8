"""The exceptions finllm raises. Every one derives from :class:`FinllmError`."""

from finllm._finllm import (
    AuditError,
    AuditPoisonedError,
    BackendError,
    ChatTemplateError,
    ContextOverflowError,
    DeadlineExceededError,
    DeviceError,
    EngineBusyError,
    EngineError,
    FinllmError,
    InvalidArgument,
    ModelLoadError,
    PolicyError,
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
    "DeviceError",
    "PolicyError",
    "AuditError",
    "AuditPoisonedError",
    "EngineBusyError",
    "DeadlineExceededError",
    "EngineError",
]
