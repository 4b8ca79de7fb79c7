"""LPIPS (Zhang et al., CVPR 2018, v0.1 linear heads) with the AlexNet or VGG16 backbone, in plain PyTorch, with
weights read from local files only (no torchvision, no download).

The distance: input RGB in [-1, 1] is shifted and scaled as in the lpips package; the ReLU outputs after five
convolutions of the backbone are normalised to unit length over channels, their squared difference is weighted
by the 1x1 linear head of each layer, averaged over space and summed over the layers.

Weights are looked up, first found wins (`find_weights`):
    1. an explicit path (`weights=`): a `<net>_lpips_v0.1.safetensors` file;
    2. the folder in the environment variable POSTERIOR_DIFFUSION_LPIPS_DIR, holding that file;
    3. the torch hub cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints): that file, or
       torchvision's backbone checkpoint (alexnet-owt-7be5be79.pth / vgg16-397923af.pth) together with the heads
       of an installed `lpips` package (lpips/weights/v0.1/alex.pth / vgg.pth);
    4. shared/data/lpips/ beside the repository checkout (the project's CI data).
Nothing is downloaded implicitly; `fetch_weights` (`posterior-diffusion lpips-weights`), called explicitly where
the network is available, downloads the standard weights (torchvision's backbone and the lpips package's heads,
checked against their SHA-256) and converts them into the hub cache's file.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.error import URLError

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch.hub import download_url_to_file


@dataclass(frozen=True)
class Backbone:
    """A torchvision-style `features` trunk: layers as ("conv", in, out, kernel, stride, padding) or ("pool",),
    each followed in torchvision's numbering by its ReLU; `taps` are the `features` indices of the tapped ReLUs."""

    layers: tuple[tuple, ...]
    taps: tuple[int, ...]
    torchvision_file: str  # <name>-<first 8 hex digits of its SHA-256>.pth
    lpips_heads_file: str
    lpips_heads_sha256: str


def _vgg16_layers() -> tuple[tuple, ...]:
    layers, channels = [], 3
    for width in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if width == "M":
            layers.append(("pool", 2, 2))
        else:
            layers.append(("conv", channels, width, 3, 1, 1))
            channels = width
    return tuple(layers)


BACKBONES = {
    "alex": Backbone(
        layers=(
            ("conv", 3, 64, 11, 4, 2),
            ("pool", 3, 2),
            ("conv", 64, 192, 5, 1, 2),
            ("pool", 3, 2),
            ("conv", 192, 384, 3, 1, 1),
            ("conv", 384, 256, 3, 1, 1),
            ("conv", 256, 256, 3, 1, 1),
        ),
        taps=(1, 4, 7, 9, 11),
        torchvision_file="alexnet-owt-7be5be79.pth",
        lpips_heads_file="alex.pth",
        lpips_heads_sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ),
    "vgg": Backbone(
        layers=_vgg16_layers(),
        taps=(3, 8, 15, 22, 29),
        torchvision_file="vgg16-397923af.pth",
        lpips_heads_file="vgg.pth",
        lpips_heads_sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ),
}
MIN_SIZE = {"alex": 32, "vgg": 16}  # smallest image side the backbone's pooling accepts
FILE_NAMES = {"alex": "alexnet_lpips_v0.1.safetensors", "vgg": "vgg16_lpips_v0.1.safetensors"}
SHIFT = (-0.030, -0.088, -0.188)  # the lpips package's ScalingLayer
SCALE = (0.458, 0.448, 0.450)
TORCHVISION_URL = "https://download.pytorch.org/models/"  # the backbones torchvision's model zoo downloads
HEADS_URL = "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/"  # lpips 0.1.4's


class LPIPSUnavailable(FileNotFoundError):
    """No weights file for the requested network was found (the message names the file to provide)."""


def _hub_checkpoints() -> Path:
    torch_home = os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch")
    return Path(torch_home) / "hub" / "checkpoints"


def _shared_folders() -> list[Path]:
    repo = Path(__file__).resolve().parents[1]
    return [repo.parent / "shared" / "data" / "lpips", Path.cwd().parent / "shared" / "data" / "lpips"]


def find_weights(net: str = "alex", weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict (backbone `features.N.*` + heads `linK.model.1.weight`) of `net`, from the first place
    in the module docstring's order that has it; LPIPSUnavailable names the file to provide otherwise."""
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; valid: {', '.join(BACKBONES)}")
    name = FILE_NAMES[net]
    if weights is not None:
        if not Path(weights).is_file():
            raise LPIPSUnavailable(f"LPIPS weights file '{weights}' does not exist")
        return load_file(weights)
    folders = []
    if os.environ.get("POSTERIOR_DIFFUSION_LPIPS_DIR"):
        folders.append(Path(os.environ["POSTERIOR_DIFFUSION_LPIPS_DIR"]))
    folders.append(_hub_checkpoints())
    for folder in folders:
        if (folder / name).is_file():
            return load_file(folder / name)
    from_hub = _torchvision_and_lpips_package(net)
    if from_hub is not None:
        return from_hub
    for folder in _shared_folders():
        if (folder / name).is_file():
            return load_file(folder / name)
    backbone = BACKBONES[net]
    raise LPIPSUnavailable(
        f"LPIPS ({net}) weights not found: looked for {name} in $POSTERIOR_DIFFUSION_LPIPS_DIR, {_hub_checkpoints()} "
        f"and shared/data/lpips/, and for {backbone.torchvision_file} there with an installed lpips package; "
        f"`posterior-diffusion lpips-weights --net {net}` downloads and converts the standard weights into the cache "
        f"(needs the network), or copy {name} into one of those folders"
    )


def _torchvision_and_lpips_package(net: str) -> dict[str, torch.Tensor] | None:
    """torchvision's cached backbone + the lpips package's heads, when both are on this machine."""
    backbone = BACKBONES[net]
    trunk = _hub_checkpoints() / backbone.torchvision_file
    try:
        import lpips as lpips_package
    except ImportError:
        return None
    heads = Path(lpips_package.__file__).parent / "weights" / "v0.1" / backbone.lpips_heads_file
    if not (trunk.is_file() and heads.is_file()):
        return None
    return _merge(trunk, heads)


def _merge(trunk: Path, heads: Path) -> dict[str, torch.Tensor]:
    """The LPIPS state dict: the `features.*` tensors of a torchvision checkpoint and the lpips package's heads."""
    state = torch.load(trunk, weights_only=True, map_location="cpu")
    return {k: v for k, v in state.items() if k.startswith("features.")} | torch.load(
        heads, weights_only=True, map_location="cpu"
    )


def fetch_weights(net: str = "alex", folder: str | Path | None = None) -> Path:
    """Download the standard weights of `net` (torchvision's backbone from TORCHVISION_URL, the lpips package's
    v0.1 heads from HEADS_URL, each checked against its SHA-256), convert them to `<net>_lpips_v0.1.safetensors`
    in `folder` (default: the torch hub cache, where `find_weights` looks) and return its path; a file already
    there is kept. Needs the network: ConnectionError without it. Only ever called explicitly."""
    if net not in BACKBONES:
        raise ValueError(f"unknown LPIPS network {net!r}; valid: {', '.join(BACKBONES)}")
    backbone = BACKBONES[net]
    path = Path(folder) / FILE_NAMES[net] if folder is not None else _hub_checkpoints() / FILE_NAMES[net]
    if path.is_file():
        return path
    downloads = [
        (TORCHVISION_URL + backbone.torchvision_file, backbone.torchvision_file.rsplit("-", 1)[1].split(".")[0]),
        (HEADS_URL + backbone.lpips_heads_file, backbone.lpips_heads_sha256),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for url, sha256 in downloads:
            files.append(Path(tmp) / url.rsplit("/", 1)[1])
            try:
                download_url_to_file(url, str(files[-1]), hash_prefix=sha256)
            except (URLError, OSError) as err:
                raise ConnectionError(
                    f"cannot download {url} ({getattr(err, 'reason', err)}); without a network, copy "
                    f"{FILE_NAMES[net]} from a machine that has it into {path.parent} or $POSTERIOR_DIFFUSION_LPIPS_DIR"
                ) from None
            except RuntimeError as err:  # torch.hub's "invalid hash value"
                raise ValueError(f"{url} is not the expected file: {err}") from None
        state = _merge(*files)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(save({k: v.contiguous() for k, v in state.items()}))
    return path


class LPIPS(torch.nn.Module):
    """LPIPS distance: forward(x, ref) with x, ref (B, 3, H, W) in [-1, 1] -> (B,). Gray images (C = 1) are
    repeated to 3 channels. No gradients are kept unless the caller enables them."""

    def __init__(self, net: str = "alex", weights: str | Path | None = None):
        super().__init__()
        state = find_weights(net, weights)
        self.backbone = BACKBONES[net]
        self.min_size = MIN_SIZE[net]
        self.convs = torch.nn.ModuleDict()
        index = 0
        for layer in self.backbone.layers:
            if layer[0] == "conv":
                _, c_in, c_out, k, stride, pad = layer
                conv = torch.nn.Conv2d(c_in, c_out, k, stride, pad)
                conv.weight.data.copy_(state[f"features.{index}.weight"])
                conv.bias.data.copy_(state[f"features.{index}.bias"])
                self.convs[str(index)] = conv
                index += 2  # conv + its ReLU
            else:
                index += 1
        self.heads = torch.nn.ParameterList(
            torch.nn.Parameter(state[f"lin{k}.model.1.weight"], requires_grad=False) for k in range(5)
        )
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped ReLU outputs for x (B, 3, H, W) in [-1, 1]."""
        h, taps, index = (x - self.shift) / self.scale, [], 0
        for layer in self.backbone.layers:
            if layer[0] == "conv":
                h = F.relu(self.convs[str(index)](h))
                index += 2
                if index - 1 in self.backbone.taps:
                    taps.append(h)
            else:
                h = F.max_pool2d(h, layer[1], layer[2])
                index += 1
        return taps

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if x.shape != ref.shape or x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS needs two (B, 1 or 3, H, W) batches of one shape, got {x.shape}, {ref.shape}")
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"LPIPS with this backbone needs images of at least {self.min_size}x{self.min_size}")
        if x.shape[1] == 1:
            x, ref = x.expand(-1, 3, -1, -1), ref.expand(-1, 3, -1, -1)
        total = 0.0
        for head, a, b in zip(self.heads, self.features(x.float()), self.features(ref.float()), strict=True):
            a = a / (a.square().sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((a - b).square(), head).mean((1, 2, 3))
        return total
