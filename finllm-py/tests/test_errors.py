import inspect
import pathlib

import pytest

import finllm
from finllm import _finllm, errors


def test_hierarchy():
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.FinllmError)
    assert issubclass(errors.ContextOverflowError, errors.InvalidArgument)
    assert issubclass(errors.FinllmError, Exception)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(errors.ModelLoadError, match="cannot read"):
        finllm.Model.load(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    with pytest.raises(errors.ModelLoadError, match="malformed GGUF"):
        finllm.Model.load(bad)
    bad.write_bytes(b"not a model at all")
    with pytest.raises(errors.ModelLoadError, match="magic"):
        finllm.Model.load(bad)


def test_bad_load_options(tiny_path, tmp_path):
    with pytest.raises(errors.InvalidArgument, match="threads"):
        finllm.Model.load(tiny_path, threads=0)
    with pytest.raises(errors.TokenizerError):
        finllm.Model.load(tiny_path, tokenizer_json=tmp_path / "none.json")


def test_devices(tiny_path):
    assert finllm.Model.load(tiny_path, device="cpu").device == "cpu"
    assert finllm.Model.load(tiny_path).device == "cpu"
    with pytest.raises(errors.InvalidArgument, match="device"):
        finllm.Model.load(tiny_path, device="tpu:0")
    try:
        gpu = finllm.Model.load(tiny_path, device="cuda:0")
    except errors.DeviceError as e:
        # A build without CUDA, or a machine without a GPU: the message says which device.
        assert "cuda:0" in str(e)
    else:
        assert gpu.device == "cuda:0"
    # "auto" takes the GPU when there is one, else the CPU.
    assert finllm.Model.load(tiny_path, device="auto").device in ("cpu", "cuda:0")


def test_bad_generation_arguments(tiny):
    with pytest.raises(errors.InvalidArgument, match="top_p"):
        tiny.generate("x", top_p=2.0)
    with pytest.raises(errors.InvalidArgument, match="temperature"):
        tiny.generate("x", temperature=-1)
    with pytest.raises(errors.ContextOverflowError):
        tiny.generate("x", max_tokens=10_000)
    with pytest.raises(errors.InvalidArgument, match="prompt"):
        tiny.generate("")
    with pytest.raises(errors.InvalidArgument):
        tiny.detokenize([10**9])
    with pytest.raises(errors.InvalidArgument, match="role"):
        tiny.chat([{"content": "no role"}])
    with pytest.raises(errors.InvalidArgument):
        tiny.chat([42])
    with pytest.raises(errors.InvalidArgument, match="at least one message"):
        tiny.chat([])
    # Errors inside a stream surface when iterating.
    with pytest.raises(errors.ContextOverflowError):
        list(tiny.stream("x", max_tokens=10_000))
    with pytest.raises(TypeError):
        tiny.generate(123)
    with pytest.raises(OverflowError):
        tiny.generate("x", max_tokens=-1)


def test_stubs_match_the_native_module():
    stub = (pathlib.Path(finllm.__file__).parent / "_finllm.pyi").read_text()
    for cls in (_finllm.Model, _finllm.Generation, _finllm.Token):
        assert f"class {cls.__name__}" in stub
        for name, member in inspect.getmembers(cls):
            if name.startswith("__") or name == "_repr_html_" and cls is not _finllm.Generation:
                continue
            assert f"def {name}(" in stub or f"    {name}:" in stub, f"{cls.__name__}.{name} missing from stub"
    assert (pathlib.Path(finllm.__file__).parent / "py.typed").is_file()
    assert finllm.__version__.count(".") == 2
