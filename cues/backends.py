"""LLM backends that answer chat conversations, optionally constrained by a JSON schema.

* ``transformers`` (default): ``AutoModelForCausalLM`` with the model's chat template, batched
  greedy generation with left padding, GGUF checkpoints through ``gguf_file``; structured
  output through xgrammar's transformers logits processor (the library vLLM uses), which
  works on CPU, so even the 135M offline model always returns parseable JSON.
* ``vllm`` (optional extra, GPU): offline ``LLM.chat`` with
  ``SamplingParams(structured_outputs=StructuredOutputsParams(json=...))``; imported only here.

The cue sources that need no LLM (``vocab-match``, ``oracle``) live in :mod:`cues.sources`.
Nothing loads at construction; :meth:`LLMBackend.load` does, once.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from cues.hub import SMOLLM2, ResolvedModel, load_pretrained, resolve_model

LLM_BACKENDS = ("transformers", "vllm")
Conversation = list[dict[str, str]]


class RepetitionGuard:
    """Stop a sequence whose generated tail is one block of ``p`` tokens repeated ``repeats`` times.

    A small model otherwise loops until ``max_new_tokens`` (stack.md §3). The check looks
    only at each sequence's own tokens, so batched and one-at-a-time outputs stay identical.
    """

    def __init__(self, prompt_len: int, *, max_period: int = 12, repeats: int = 4, single_token_repeats: int = 16):
        self.prompt_len, self.max_period = prompt_len, max_period
        self.repeats, self.single_token_repeats = repeats, single_token_repeats

    def looping(self, gen: list[int]) -> bool:
        for p in range(1, self.max_period + 1):
            r = self.single_token_repeats if p == 1 else self.repeats
            if len(gen) >= p * r and gen[-p:] * r == gen[-p * r:]:
                return True
        return False

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        done = [self.looping(row[self.prompt_len:].tolist()) for row in input_ids]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class SchemaLogitsProcessor:
    """xgrammar JSON-schema masking for a batch, tolerant of rows that already stopped.

    xgrammar's own ``contrib.hf.LogitsProcessor`` asserts that every row's last token is
    grammatical; a row stopped by :class:`RepetitionGuard` is then fed pad tokens, which are
    not. Such a row is marked finished here and left unmasked (its output is pad anyway).
    """

    def __init__(self, compiled_grammar):
        self.compiled = compiled_grammar
        self.matchers: list = []
        self.alive: list[bool] = []
        self.bitmask = None
        self.started = False

    def __call__(self, input_ids, scores):
        import xgrammar as xgr

        if not self.matchers:
            self.matchers = [xgr.GrammarMatcher(self.compiled) for _ in range(input_ids.shape[0])]
            self.alive = [True] * len(self.matchers)
            self.bitmask = xgr.allocate_token_bitmask(len(self.matchers), self.compiled.tokenizer_info.vocab_size)
        if self.started:
            for i, m in enumerate(self.matchers):
                if self.alive[i] and not m.is_terminated() and not m.accept_token(int(input_ids[i, -1])):
                    self.alive[i] = False
        self.started = True
        rows = [i for i, m in enumerate(self.matchers) if self.alive[i] and not m.is_terminated()]
        for i in rows:
            self.matchers[i].fill_next_token_bitmask(self.bitmask, i)
        if rows:
            device = scores.device
            scores = scores.to("cpu") if device.type != "cuda" else scores
            xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device), indices=rows)
            scores = scores.to(device)
        return scores


class LLMBackend(ABC):
    """Answers conversations; ``config()`` is what goes into the cue stage's fingerprint."""

    name: str

    @abstractmethod
    def config(self) -> dict[str, Any]: ...

    @abstractmethod
    def load(self) -> None: ...

    @abstractmethod
    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None) -> list[str]: ...


class TransformersBackend(LLMBackend):
    """Batched greedy chat generation with transformers (CPU or GPU)."""

    name = "transformers"

    def __init__(self, *, model: str = SMOLLM2, gguf_file: str | None = None, max_new_tokens: int = 160,
                 batch_size: int = 8, device: str | None = None, repetition_guard: bool = True):
        self.model_spec, self.gguf_file = model, gguf_file
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.device, self.repetition_guard = device, repetition_guard
        self.resolved: ResolvedModel | None = None
        self.model = self.tokenizer = None
        self._grammars: dict[str, Any] = {}

    def resolve(self) -> ResolvedModel:
        if self.resolved is None:
            self.resolved = resolve_model(self.model_spec, gguf_file=self.gguf_file)
        return self.resolved

    def config(self) -> dict[str, Any]:
        # batch_size is absent on purpose: greedy outputs do not depend on it.
        return {"backend": self.name, "model": self.resolve().label, "decoding": "greedy",
                "max_new_tokens": self.max_new_tokens, "repetition_guard": self.repetition_guard}

    def load(self) -> None:
        if self.model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        res = self.resolve()
        self.device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        kw = {"gguf_file": res.gguf_file} if res.gguf_file else {}
        self.tokenizer = load_pretrained(AutoTokenizer, res, padding_side="left", **kw)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{res.label}: the tokenizer has no chat template; use an instruction-tuned model")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.model = load_pretrained(AutoModelForCausalLM, res, dtype=dtype, **kw).to(self.device).eval()

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

    def generate(self, texts: list[str], schema: dict[str, Any] | None = None) -> list[str]:
        """Greedy answers for rendered prompts, ``batch_size`` at a time (similar lengths together)."""
        import torch
        from transformers import StoppingCriteriaList

        self.load()
        tok = self.tokenizer
        lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])  # less padding per batch
        out: list[str] = [""] * len(texts)
        for b in range(0, len(order), self.batch_size):
            idx = order[b:b + self.batch_size]
            # The chat template already holds the special tokens.
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            plen = enc["input_ids"].shape[1]
            kw: dict[str, Any] = {}
            if schema is not None:
                kw["logits_processor"] = [SchemaLogitsProcessor(self._grammar(schema))]
            if self.repetition_guard:
                kw["stopping_criteria"] = StoppingCriteriaList([RepetitionGuard(plen)])
            with torch.inference_mode():
                seqs = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                           pad_token_id=tok.pad_token_id, **kw)
            for i, seq in zip(idx, seqs):
                out[i] = tok.decode(seq[plen:], skip_special_tokens=True)
        return out

    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None) -> list[str]:
        self.load()
        return self.generate(self.prompts(conversations), schema)


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

    def chat(self, conversations: list[Conversation], schema: dict[str, Any] | None = None) -> list[str]:
        self.load()
        outs = self.llm.chat(conversations, self.sampling_params(schema), use_tqdm=False)
        return [o.outputs[0].text for o in outs]


def make_llm_backend(name: str, **kwargs) -> LLMBackend:
    """Backend by name; an unknown name fails here, before anything loads."""
    if name == "transformers":
        return TransformersBackend(**kwargs)
    if name == "vllm":
        kwargs.pop("gguf_file", None), kwargs.pop("batch_size", None), kwargs.pop("repetition_guard", None)
        kwargs.pop("device", None)
        return VLLMBackend(**kwargs)
    raise ValueError(f"unknown LLM backend {name!r}; choose one of {list(LLM_BACKENDS)}")
