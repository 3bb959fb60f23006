"""LLM backends that answer chat conversations, optionally constrained by a JSON schema.

* ``transformers`` (default): ``AutoModelForCausalLM`` with the model's chat template, GGUF
  checkpoints through ``gguf_file``; batched greedy decoding by :mod:`cues.generation` (the
  prompts' shared prefix computed once, continuous batching); structured output through an
  xgrammar matcher per row (the library vLLM uses), which works on CPU, so even the 135M
  offline model always returns parseable JSON.
* ``vllm`` (optional extra, GPU): offline ``LLM.chat`` with
  ``SamplingParams(structured_outputs=StructuredOutputsParams(json=...))``; imported only here.

The cue sources that need no LLM (``vocab-match``, ``oracle``) live in :mod:`cues.sources`.
Nothing loads at construction; :meth:`LLMBackend.load` does, once.
"""
from __future__ import annotations

import ctypes
import json
import os
import sys
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from cues.hub import SMOLLM2, ResolvedModel, load_pretrained, resolve_model

LLM_BACKENDS = ("transformers", "vllm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
Conversation = list[dict[str, str]]


class LLMBackend(ABC):
    """Answers conversations; ``config()`` is what goes into the cue stage's fingerprint."""

    name: str

    @abstractmethod
    def config(self) -> dict[str, Any]: ...

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None,
             on_answer: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answers; ``on_answer(i)`` is called as answer ``i`` is finished (progress)."""

    def warm(self, schema: dict[str, Any] | None) -> None:
        """Do now what the first :meth:`chat` with ``schema`` would do once (load, compile)."""
        self.load()


class TransformersBackend(LLMBackend):
    """Batched greedy chat generation with transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, *, model: str = SMOLLM2, gguf_file: str | None = None, max_new_tokens: int = 160,
                 batch_size: int = 32, device: str | None = None, repetition_guard: bool = True,
                 dtype: str = "auto"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: choose one of {list(DTYPES)}")
        self.model_spec, self.gguf_file, self.dtype_name = model, gguf_file, dtype
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.device, self.repetition_guard = device, repetition_guard
        self.resolved: ResolvedModel | None = None
        self.model = self.tokenizer = None
        self._grammars: dict[str, Any] = {}
        self.decoder = None  # the last call's GreedyDecoder (its stats say what was computed)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled for a worker process (cues.parallel) without what load() made: it loads its own.
        return {**self.__dict__, "model": None, "tokenizer": None, "_grammars": {}, "decoder": None}

    def resolve(self) -> ResolvedModel:
        if self.resolved is None:
            self.resolved = resolve_model(self.model_spec, gguf_file=self.gguf_file)
        return self.resolved

    def config(self) -> dict[str, Any]:
        # batch_size is absent on purpose: greedy outputs do not depend on it.
        res = self.resolve()
        return {"backend": self.name, "model": res.label, "model_identity": res.identity, "dtype": self.torch_dtype(),
                "decoding": "greedy", "max_new_tokens": self.max_new_tokens, "repetition_guard": self.repetition_guard}

    def torch_dtype(self) -> str:
        """The compute dtype: ``auto`` is float16 on CUDA, bfloat16 on a CPU with native bf16
        matmuls (AMX/AVX512-BF16: measured faster than float32 there), else float32."""
        if self.dtype_name != "auto":
            return self.dtype_name
        device = self.device or ("cuda" if cuda_available() else "cpu")
        if device.startswith("cuda"):
            return "float16"
        return "bfloat16" if cpu_has_fast_bf16() else "float32"

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cues.generation import use_gqa_sdpa

        res = self.resolve()
        res.verify()  # the weight file's sha256, right before it is loaded
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = getattr(torch, self.torch_dtype())
        converted = converted_dir(res, self.torch_dtype())
        if converted is not None and (converted / CONVERTED_MARK).exists():
            src, kw = ResolvedModel(str(converted), res.label), {}
        else:
            src, kw = res, ({"gguf_file": res.gguf_file} if res.gguf_file else {})
        with gguf_read_once():
            self.tokenizer = load_pretrained(AutoTokenizer, src, padding_side="left", **kw)
            if not getattr(self.tokenizer, "chat_template", None):
                raise ValueError(f"{res.label}: the tokenizer has no chat template; use an instruction-tuned model")
            if self.tokenizer.pad_token_id is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
            self.model = load_pretrained(AutoModelForCausalLM, src, dtype=dtype, **kw).eval()
        if converted is not None and src is res:
            save_converted(self.model, self.tokenizer, converted)
        self.model = self.model.to(self.device)
        use_gqa_sdpa(self.model)

    def warm(self, schema: dict[str, Any] | None) -> None:
        # The grammar's compilation is ~17 s of one core for the Qwen vocabulary (8 s on two):
        # done before cues.parallel forks, the asking processes inherit it.
        self.load()
        if schema is not None:
            self._grammar(schema)

    def _grammar(self, schema: dict[str, Any]):
        import xgrammar as xgr

        key = json.dumps(schema)  # property order matters: reasoning before the answer
        if key not in self._grammars:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            # Compact JSON (no free whitespace): fewer tokens, and no room for whitespace loops.
            self._grammars[key] = xgr.GrammarCompiler(info).compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def prompts(self, conversations: list[Conversation]) -> list[str]:
        return [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]

    def generate(self, texts: list[str], schema: dict[str, Any] | None = None,
                 on_answer: Callable[[int], None] | None = None) -> list[str]:
        """Greedy answers for rendered prompts, up to ``batch_size`` decoded together."""
        from cues.generation import GreedyDecoder, RepetitionGuard

        self.load()
        tok = self.tokenizer
        # The chat template already holds the special tokens.
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else []) | {tok.eos_token_id}
        self.decoder = GreedyDecoder(self.model, eos_ids={e for e in eos_ids if e is not None},
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                     grammar=self._grammar(schema) if schema is not None else None,
                                     guard=RepetitionGuard() if self.repetition_guard else None, on_done=on_answer)
        return [tok.decode(ids, skip_special_tokens=True) for ids in self.decoder(prompts)]

    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None,
             on_answer: Callable[[int], None] | None = None) -> list[str]:
        self.load()
        return self.generate(self.prompts(conversations), schema, on_answer)

    def score_verdicts(self, conversations: list[Conversation], raw_outputs: list[str]) -> list:
        """Per answer, ``(free, in_place)`` margins of its verdicts (:mod:`cues.verdict_score`)."""
        from cues.verdict_score import score_answers

        self.load()
        tok = self.tokenizer
        prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in self.prompts(conversations)]
        return score_answers(self.model, lambda s: tok(s, add_special_tokens=False)["input_ids"], prompts,
                             raw_outputs, batch_size=min(self.batch_size, 16))


class VLLMBackend(LLMBackend):
    """vLLM offline batch chat (GPU). Install the optional ``[vllm]`` extra in its own environment."""

    name = "vllm"

    def __init__(self, *, model: str, max_new_tokens: int = 256, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = 4096):
        if model == SMOLLM2:
            raise ValueError("the vllm backend needs a hub id or a local HF model directory (e.g. "
                             "Qwen/Qwen2.5-7B-Instruct), not the bundled GGUF")
        self.model_spec, self.max_new_tokens = model, max_new_tokens
        self.tensor_parallel_size, self.gpu_memory_utilization = tensor_parallel_size, gpu_memory_utilization
        self.max_model_len = max_model_len
        self.llm = None
        self.resolved: ResolvedModel | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "llm": None}  # a worker process loads its own (cues.parallel)

    def config(self) -> dict[str, Any]:
        if self.resolved is None:
            self.resolved = resolve_model(self.model_spec)
        return {"backend": self.name, "model": self.resolved.label, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens}

    def load(self) -> None:
        if self.llm is not None:
            return
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("backend 'vllm' needs the optional extra: pip install -e '.[vllm]' "
                              "(GPU machines; it pins torch==2.14.0, so use a separate environment)") from exc
        self.config()
        self.llm = LLM(model=self.resolved.path, tensor_parallel_size=self.tensor_parallel_size, seed=0,
                       gpu_memory_utilization=self.gpu_memory_utilization, max_model_len=self.max_model_len)

    def sampling_params(self, schema: dict[str, Any] | None):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams  # not exported at top level in 0.33

        structured = StructuredOutputsParams(json=schema) if schema is not None else None
        return SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens, structured_outputs=structured)

    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None,
             on_answer: Callable[[int], None] | None = None) -> list[str]:
        self.load()
        outs = self.llm.chat(conversations, self.sampling_params(schema), use_tqdm=False)
        for i in range(len(outs) if on_answer else 0):
            on_answer(i)
        return [o.outputs[0].text for o in outs]


CONVERTED_MARK = ".complete"


@contextmanager
def gguf_read_once():
    """Within the block, each GGUF file is parsed once however often transformers opens it.

    Loading a GGUF model in transformers constructs a ``gguf.GGUFReader`` three times (tokenizer,
    config, tensors), and each construction parses the whole metadata, the 151k-token vocabulary
    and merges included, element by element: ~17 s each for the Qwen files. Reading it once took the
    0.5B's tokenizer and model from 69 s to 45 s (same logits; 2026-12-01).
    transformers imports ``GGUFReader`` from ``gguf`` at each call, so the module attribute is what
    it gets; the reader is only read from, never changed.
    """
    try:
        import gguf
    except ImportError:  # not a GGUF load (transformers says what to install if it is)
        yield
        return
    original, readers = gguf.GGUFReader, {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def converted_dir(res: ResolvedModel, dtype: str) -> "Path | None":
    """Where a verified GGUF model is kept converted to ``dtype`` (safetensors + tokenizer).

    Converting a GGUF file (de-quantising every tensor, building the tokenizer from its
    vocabulary) takes about a minute; a converted copy loads in seconds. It is keyed by the
    GGUF file's sha256, which :meth:`ResolvedModel.verify` has just checked.
    """
    sha = res.identity.get("sha256")
    if not res.gguf_file or not sha:
        return None
    from cues.weights import weights_dir

    return weights_dir() / "converted" / f"{sha[:24]}-{dtype}"


def save_converted(model, tokenizer, out: "Path") -> None:
    """Save a GGUF-loaded model as a plain checkpoint (temp dir + rename; best effort)."""
    import shutil
    import sys

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    quantizer, qconfig = model.hf_quantizer, getattr(model.config, "quantization_config", None)
    try:
        # transformers refuses to save a model it loaded from GGUF; the tensors are plain by now
        model.hf_quantizer = None
        if qconfig is not None:
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_MARK).touch()
        os.replace(tmp, out)
    except OSError as exc:  # a full or read-only disk only costs the conversion next time
        print(f"[cues] could not keep the converted model in {out} ({exc})", file=sys.stderr)
    finally:
        model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.quantization_config = qconfig
        shutil.rmtree(tmp, ignore_errors=True)


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, decided without importing torch where the NVIDIA driver library
    is absent (then CUDA cannot run): a finished cue set's fingerprint holds the dtype, so a no-op
    rerun would otherwise pay the ~3 s torch import for nothing."""
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        try:
            ctypes.CDLL("libcuda.so.1")  # what the CUDA runtime loads first; no driver, no CUDA device
        except OSError:
            return False
    import torch

    return torch.cuda.is_available()


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AMX tiles or AVX512-BF16), per /proc/cpuinfo."""
    try:
        flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def make_llm_backend(name: str, **kwargs) -> LLMBackend:
    """Backend by name; an unknown name fails here, before anything loads."""
    if name == "transformers":
        kwargs.pop("tensor_parallel_size", None)
        return TransformersBackend(**kwargs)
    if name == "vllm":
        kwargs.pop("gguf_file", None), kwargs.pop("batch_size", None), kwargs.pop("repetition_guard", None)
        kwargs.pop("device", None), kwargs.pop("dtype", None)
        return VLLMBackend(**kwargs)
    raise ValueError(f"unknown LLM backend {name!r}; choose one of {list(LLM_BACKENDS)}")
