"""A RAFT optical-flow estimator (Teed & Deng 2020, "RAFT: Recurrent All-Pairs Field Transforms").

The network (the paper's full model): a feature encoder and a context encoder (residual CNNs to 1/8
resolution), a 4-level pyramid of all-pairs correlations looked up in a radius-4 window around the
current estimate, a separable ConvGRU that updates the flow iteratively, and convex upsampling of the
1/8 flow by a learned 3 x 3 mask. Parameter names follow the authors' released checkpoints (e.g.
raft-things.pth, saved from ``torch.nn.DataParallel``, so every key starts with "module."), so a
downloaded file loads as is. Weights come only from the local file the user names; nothing is
downloaded and there is no random-weight fallback.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HIDDEN = CONTEXT = 128  # GRU state and context feature channels
RADIUS, LEVELS = 4, 4   # correlation lookup window radius and pyramid levels
ITERATIONS = 12         # GRU updates per pair (the authors' default at test time)
MIN_SIDE = 8 * 2 ** (LEVELS - 1)  # smallest padded side: 1 pixel at the coarsest correlation level


class ResidualBlock(nn.Module):
    """Two 3 x 3 convolutions with normalisation and a (strided 1 x 1) shortcut."""

    def __init__(self, inputs: int, planes: int, norm: str, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, planes, 3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1)
        self.norm1, self.norm2 = _norm(norm, planes), _norm(norm, planes)
        self.downsample = None
        if stride != 1:
            self.norm3 = _norm(norm, planes)
            self.downsample = nn.Sequential(nn.Conv2d(inputs, planes, 1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.InstanceNorm2d(channels)


class Encoder(nn.Module):
    """Image (N, 3, H, W) in [-1, 1] -> features (N, out, H/8, W/8)."""

    def __init__(self, out: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3)
        self.norm1 = _norm(norm, 64)
        self.layer1 = nn.Sequential(ResidualBlock(64, 64, norm), ResidualBlock(64, 64, norm))
        self.layer2 = nn.Sequential(ResidualBlock(64, 96, norm, 2), ResidualBlock(96, 96, norm))
        self.layer3 = nn.Sequential(ResidualBlock(96, 128, norm, 2), ResidualBlock(128, 128, norm))
        self.conv2 = nn.Conv2d(128, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class MotionEncoder(nn.Module):
    """Correlation features and the current flow -> motion features (128 channels, the flow included)."""

    def __init__(self) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(LEVELS * (2 * RADIUS + 1) ** 2, 256, 1)
        self.convc2 = nn.Conv2d(256, 192, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(192 + 64, 128 - 2, 3, padding=1)

    def forward(self, flow: torch.Tensor, corr: torch.Tensor) -> torch.Tensor:
        c = F.relu(self.convc2(F.relu(self.convc1(corr))))
        f = F.relu(self.convf2(F.relu(self.convf1(flow))))
        return torch.cat((F.relu(self.conv(torch.cat((c, f), 1))), flow), 1)


class SepConvGRU(nn.Module):
    """A ConvGRU run twice: with 1 x 5 then with 5 x 1 kernels."""

    def __init__(self, hidden: int, inputs: int) -> None:
        super().__init__()
        for suffix, (kernel, pad) in (("1", ((1, 5), (0, 2))), ("2", ((5, 1), (2, 0)))):
            for gate in ("z", "r", "q"):
                setattr(self, f"conv{gate}{suffix}", nn.Conv2d(hidden + inputs, hidden, kernel, padding=pad))

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        for suffix in ("1", "2"):
            hx = torch.cat((h, x), 1)
            z = torch.sigmoid(getattr(self, f"convz{suffix}")(hx))
            r = torch.sigmoid(getattr(self, f"convr{suffix}")(hx))
            q = torch.tanh(getattr(self, f"convq{suffix}")(torch.cat((r * h, x), 1)))
            h = (1 - z) * h + z * q
        return h


class FlowHead(nn.Module):
    def __init__(self, inputs: int = HIDDEN, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


class UpdateBlock(nn.Module):
    """One GRU update: (state, context, correlation, flow) -> (state, upsampling mask logits, flow step)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = MotionEncoder()
        self.gru = SepConvGRU(HIDDEN, CONTEXT + 128)
        self.flow_head = FlowHead()
        self.mask = nn.Sequential(nn.Conv2d(HIDDEN, 256, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(256, 64 * 9, 1))

    def forward(self, net, context, corr, flow):
        net = self.gru(net, torch.cat((context, self.encoder(flow, corr)), 1))
        return net, 0.25 * self.mask(net), self.flow_head(net)


def correlation_pyramid(fmap1: torch.Tensor, fmap2: torch.Tensor) -> list[torch.Tensor]:
    """All-pairs correlation (N*H*W, 1, H, W) of two feature maps, and its 2x, 4x, 8x average-pooled levels."""
    n, c, h, w = fmap1.shape
    corr = torch.einsum("nci,ncj->nij", fmap1.reshape(n, c, h * w), fmap2.reshape(n, c, h * w)) / c ** 0.5
    levels = [corr.reshape(n * h * w, 1, h, w)]
    for _ in range(LEVELS - 1):
        levels.append(F.avg_pool2d(levels[-1], 2, stride=2))
    return levels


def lookup(pyramid: list[torch.Tensor], coords: torch.Tensor) -> torch.Tensor:
    """Correlation features (N, LEVELS * (2R+1)^2, H, W) around ``coords`` (N, 2, H, W), the (x, y) in image 2.

    Window order as in the released models: the x offset varies along the first window axis, y along the
    second (feature index = level * (2R+1)^2 + ix * (2R+1) + iy); bilinear reads, zero outside.
    """
    n, _, h, w = coords.shape
    offsets = torch.arange(-RADIUS, RADIUS + 1, dtype=coords.dtype, device=coords.device)
    ox, oy = torch.meshgrid(offsets, offsets, indexing="ij")
    window = torch.stack((ox, oy), -1).view(1, 2 * RADIUS + 1, 2 * RADIUS + 1, 2)
    centre = coords.permute(0, 2, 3, 1).reshape(n * h * w, 1, 1, 2)
    out = []
    for level, corr in enumerate(pyramid):
        points = centre / 2 ** level + window
        size = torch.tensor([max(corr.shape[-1] - 1, 1), max(corr.shape[-2] - 1, 1)], dtype=coords.dtype,
                            device=coords.device)
        sampled = F.grid_sample(corr, 2 * points / size - 1, align_corners=True)
        out.append(sampled.view(n, h, w, -1))
    return torch.cat(out, -1).permute(0, 3, 1, 2).contiguous().float()


def convex_upsample(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) flow at 1/8 -> (N, 2, 8H, 8W): each fine pixel a softmax-weighted mix of its 3 x 3 coarse neighbours."""
    n, _, h, w = flow.shape
    weights = torch.softmax(mask.view(n, 1, 9, 8, 8, h, w), dim=2)
    neighbours = F.unfold(8 * flow, (3, 3), padding=1).view(n, 2, 9, 1, 1, h, w)
    up = (weights * neighbours).sum(2)  # (n, 2, 8, 8, h, w)
    return up.permute(0, 1, 4, 2, 5, 3).reshape(n, 2, 8 * h, 8 * w)


class RAFT(nn.Module):
    """The full RAFT model; ``forward`` maps two images (N, 3, H, W) in [0, 255], H and W multiples of 8, to flow."""

    def __init__(self) -> None:
        super().__init__()
        self.fnet = Encoder(256, "instance")
        self.cnet = Encoder(HIDDEN + CONTEXT, "batch")
        self.update_block = UpdateBlock()

    def forward(self, image1: torch.Tensor, image2: torch.Tensor, iterations: int = ITERATIONS) -> torch.Tensor:
        image1, image2 = 2 * (image1 / 255.0) - 1, 2 * (image2 / 255.0) - 1
        fmaps = self.fnet(torch.cat((image1, image2))).float()
        pyramid = correlation_pyramid(*fmaps.chunk(2))
        net, context = torch.split(self.cnet(image1), (HIDDEN, CONTEXT), 1)
        net, context = torch.tanh(net), torch.relu(context)
        n, _, h, w = net.shape
        ys, xs = torch.meshgrid(torch.arange(h, device=net.device), torch.arange(w, device=net.device), indexing="ij")
        coords0 = torch.stack((xs, ys)).float().unsqueeze(0).expand(n, -1, -1, -1)
        coords1, mask = coords0.clone(), None
        for _ in range(iterations):
            coords1 = coords1.detach()
            net, mask, step = self.update_block(net, context, lookup(pyramid, coords1), coords1 - coords0)
            coords1 = coords1 + step
        return convex_upsample(coords1 - coords0, mask)


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    """The full RAFT's parameter names and shapes (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in RAFT().state_dict().items()}


def _read(path: Path):
    """The object saved in ``path``, memory-mapped where the file's format allows (no tensor data read)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the pre-zip format of torch < 1.6


def read_weights(weights: str | Path) -> dict[str, torch.Tensor]:
    """The full RAFT's parameters in the local checkpoint ``weights`` ("module." prefixes dropped), checked
    by name and shape against the model. Raises ValueError naming what was expected when the path is
    empty, holds a NUL byte, is missing or no regular file, is not a PyTorch checkpoint, or holds another
    network (raft-small among them)."""
    hint = "set flow_weights to a local RAFT checkpoint such as raft-things.pth (Teed & Deng's release)"
    if weights and "\0" in str(weights):
        raise ValueError(f"RAFT weights path {str(weights)!r} holds a NUL character, which no file name can; {hint}")
    path = Path(weights).expanduser() if weights else None
    if path is None or not path.exists():
        raise ValueError(f"RAFT weights file not found: {str(weights)!r}; {hint}")
    if not path.is_file():
        raise ValueError(f"RAFT weights {path} is not a regular file (a folder, FIFO or device); {hint}")
    try:
        state = _read(path)
    except Exception as exc:  # a corrupt or non-torch file: say which and why
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of RAFT parameters, got {type(state).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or wrong:
        detail = ("missing " + ", ".join(missing[:4]) + (" ..." if len(missing) > 4 else "")) if missing else \
            "wrong shape for " + ", ".join(f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in wrong[:3])
        fnet_out = state.get("fnet.conv2.weight")
        small = fnet_out is not None and fnet_out.ndim == 4 and fnet_out.shape[0] == 128  # raft-small's encoder
        kind = "a raft-small checkpoint, which is not supported; " if small else ""
        raise ValueError(f"{path} is {kind}not the full RAFT model's parameters (raft-things.pth / "
                         f"raft-sintel.pth / raft-kitti.pth layout, keys like 'module.fnet.conv1.weight'): {detail}")
    return {k: state[k] for k in expected}


def load_raft(weights: str | Path, device: str | torch.device = "cpu") -> RAFT:
    """A RAFT model with the weights of the local checkpoint ``weights``, in eval mode on ``device``.

    Raises ValueError as ``read_weights`` does.
    """
    model = RAFT()
    model.load_state_dict(read_weights(weights))
    return model.eval().to(device)


class RAFTFlow:
    """FlowEstimator backed by RAFT: dense flow a->b (H, W, 2) for two uint8 RGB frames of any size.

    Frames are padded by edge replication to multiples of 8, at least ``MIN_SIDE`` (the coarsest
    correlation level must keep a pixel), and the flow cropped back.
    """

    def __init__(self, weights: str | Path = "", device: str | torch.device | None = None,
                 iterations: int = ITERATIONS) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_raft(weights, self.device)
        self.iterations = iterations

    @torch.inference_mode()
    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        height, width = a.shape[:2]
        pad_h, pad_w = (max(side + -side % 8, MIN_SIDE) - side for side in (height, width))
        pads = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        images = torch.from_numpy(np.stack((a, b))).permute(0, 3, 1, 2).float().to(self.device)
        images = F.pad(images, pads, mode="replicate")
        flow = self.model(images[:1], images[1:], self.iterations)[0]
        flow = flow[:, pads[2]:pads[2] + height, pads[0]:pads[0] + width]
        return flow.permute(1, 2, 0).float().cpu().numpy()


_SHARED: dict[tuple, RAFTFlow] = {}
_SHARED_LOCK = threading.Lock()


def shared_raft(weights: str | Path = "", device: str | torch.device | None = None) -> RAFTFlow:
    """The process's one ``RAFTFlow`` for this weights file on this device: read from disk once, not once
    per keyframe batch and propagation span. Keyed by the file's resolved path, size and modification
    time, so a file replaced on disk is read again; only the most recent estimator is kept, so a job
    that changes its weights does not pile networks up. Errors are ``read_weights``'."""
    path = Path(weights).expanduser() if weights else None
    try:
        stat = path.stat() if path else None
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns) if stat else None
    except (OSError, ValueError):  # missing, unreadable, a NUL byte: RAFTFlow says which
        key = None
    resolved = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if key is None:
        return RAFTFlow(weights, resolved)
    key += (str(resolved),)
    with _SHARED_LOCK:
        if key not in _SHARED:
            estimator = RAFTFlow(weights, resolved)
            _SHARED.clear()
            _SHARED[key] = estimator
        return _SHARED[key]
