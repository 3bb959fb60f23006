"""VGGish (the paper's audio encoder): the exact AudioSet input pipeline and the network.

Input pipeline (AudioSet ``vggish_input.py`` / ``mel_features.py`` definition): stereo is averaged
to mono, other rates are resampled to 16 kHz (torchaudio), 25 ms periodic-Hann frames every
10 ms, 512-point FFT magnitude, 64 HTK-mel bands 125-7500 Hz with the DC bin weighted zero,
``log(mel + 0.01)``, cut into non-overlapping 0.96 s examples of 96 x 64. Example i covers
[0.96 i, 0.96 (i + 1)) s, so on a T-second clip example i is aligned with frame/second i (how
AVSBench's released features were computed).

Network: the widely used PyTorch port's state-dict layout (``features.{0,3,6,8,11,13}`` conv
stack, ``embeddings.{0,2,4}`` fully connected, 128-d) plus the optional AudioSet PCA/whitening
and 8-bit quantisation post-processing. Weights come from a local file only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.encoders.logmel import LogMelConfig, waveform_to_examples  # noqa: F401  (the public VGGish input API)
from pipeline.errors import ConfigError, MissingInputError
from pipeline.fingerprint import weight_identity

EMBEDDING_SIZE = 128
QUANTIZE_RANGE = (-2.0, 2.0)


class VGGishNet(nn.Module):
    """The VGGish network: examples ``[N, 1, 96, 64]`` -> embeddings ``[N, 128]``.

    Parameter names follow the PyTorch port (``features.*``, ``embeddings.*``), so its
    converted checkpoint loads with ``load_state_dict``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True),
            nn.Linear(4096, 4096), nn.ReLU(True),
            nn.Linear(4096, EMBEDDING_SIZE), nn.ReLU(True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (N, 512, 6, 4)
        # flatten in TF's NHWC order, which the converted fc weights expect
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        return self.embeddings(x)


class VGGishPCA(nn.Module):
    """AudioSet post-processing: PCA/whitening, clip to [-2, 2], 8-bit quantisation (as float)."""

    def __init__(self, eigen_vectors: torch.Tensor, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("pca_matrix", eigen_vectors.float().reshape(EMBEDDING_SIZE, EMBEDDING_SIZE))
        self.register_buffer("pca_means", means.float().reshape(EMBEDDING_SIZE, 1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        lo, hi = QUANTIZE_RANGE
        pca = (self.pca_matrix @ (emb.T - self.pca_means)).T
        return torch.round((pca.clamp(lo, hi) - lo) * (255.0 / (hi - lo)))


def _load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{path}: VGGish weights file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix == ".npz":
        return {k: torch.from_numpy(v) for k, v in np.load(path).items()}
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors only: no pickled code


class VGGishEncoder:
    """Frozen VGGish: waveform -> one 128-d vector per second.

    Args:
        weights: state dict of the PyTorch port (``.pth``/``.pt``/``.safetensors``/``.npz``);
            required, there are no built-in weights (``--vggish-weights``).
        pca: optional AudioSet PCA parameters (``pca_eigen_vectors`` [128,128], ``pca_means``
            [128]); when given, embeddings are PCA-whitened and quantised like the released
            AudioSet features (``--vggish-pca``).
    """

    name = "vggish"
    dim = EMBEDDING_SIZE
    frontend = LogMelConfig()

    def __init__(self, weights: str | Path | None = None, pca: str | Path | None = None, batch_size: int = 64) -> None:
        self.weights = str(weights) if weights else None
        self.pca_path = str(pca) if pca else None
        self.batch_size = batch_size
        self.net: VGGishNet | None = None
        self.pca: VGGishPCA | None = None

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights and weight_identity(self.weights),
                "pca": self.pca_path and weight_identity(self.pca_path), "dim": self.dim,
                "frontend": {**self.frontend.__dict__}, "versions": {"torch": torch.__version__}}

    def setup(self) -> None:
        if self.net is not None:
            return
        if not self.weights:
            raise ConfigError("VGGish needs a local checkpoint: pass --vggish-weights PATH (the PyTorch port's "
                             "state dict, e.g. vggish-10086976.pth); no random weights are ever used")
        sd = _load_tensors(self.weights)
        pca_keys = {k for k in sd if k.startswith("pproc.")}
        net = VGGishNet()
        missing, unexpected = net.load_state_dict({k: v for k, v in sd.items() if k not in pca_keys}, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{self.weights}: not a VGGish state dict (missing {missing[:4]}, unexpected {unexpected[:4]})")
        self.net = net.eval()
        if self.pca_path:
            p = _load_tensors(self.pca_path)
            if not {"pca_eigen_vectors", "pca_means"} <= set(p):
                raise ConfigError(f"{self.pca_path}: expected keys pca_eigen_vectors and pca_means, got {sorted(p)}")
            self.pca = VGGishPCA(torch.as_tensor(p["pca_eigen_vectors"]), torch.as_tensor(p["pca_means"])).eval()

    @torch.no_grad()
    def embed(self, examples: np.ndarray) -> np.ndarray:
        """``[N, 96, 64]`` -> ``[N, 128]`` float32."""
        if self.net is None:
            raise RuntimeError("VGGishEncoder.setup() was not called")
        out = []
        for b in range(0, len(examples), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(examples[b:b + self.batch_size]))[:, None]
            e = self.net(x)
            out.append(self.pca(e) if self.pca is not None else e)
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.dim), np.float32)
