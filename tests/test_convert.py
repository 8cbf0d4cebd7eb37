"""Checkpoint conversion: numerical parity with the original code, key mapping, config mapping, safety."""

import copy
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.convert import (
    UnsafeCheckpointError,
    convert_state_dict,
    convert_vidtwin_checkpoint,
    load_original_checkpoint,
    load_original_config,
    main,
    original_config_to_diffusers,
)

# Reference outputs of the original implementation live outside the project (../shared/reference).
REFERENCE = Path(
    os.environ.get("VIDTWIN_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference" / "vidtwin")
)
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "tiny" / "expected.safetensors").exists(),
    reason=f"VidTwin reference outputs not found at {REFERENCE} (set VIDTWIN_REFERENCE_DIR)",
)


@pytest.fixture(scope="module")
def tiny_original():
    """(model section, original state dict) of the reference fixture."""
    return load_original_config(REFERENCE / "tiny" / "reference_config.json"), load_file(
        REFERENCE / "tiny" / "weights.safetensors"
    )


@needs_reference
def test_converted_fixture_reproduces_the_original(tmp_path):
    out = tmp_path / "converted"
    assert main(
        [
            "--original-config", str(REFERENCE / "tiny" / "reference_config.json"),
            "--checkpoint", str(REFERENCE / "tiny" / "weights.safetensors"),
            "--output-dir", str(out),
        ]
    ) == 0
    assert (out / "config.json").exists() and (out / "diffusion_pytorch_model.safetensors").exists()
    card = (out / "README.md").read_text()
    assert "sha256" in card and "compression rate" in card

    model = AutoencoderVidTwin.from_pretrained(out).eval()
    inputs = load_file(REFERENCE / "tiny" / "inputs.safetensors")
    expected = load_file(REFERENCE / "tiny" / "expected.safetensors")
    w_d = model.dynamics_grid[1]
    got = {}
    with torch.no_grad():
        for name in ("a", "b"):
            video = inputs[f"video_{name}"]
            # Intermediates first: they localise a regression.
            z = model.encoder(model.patch_embed(video))
            got[f"{name}_enc_z"] = z
            got[f"{name}_qformer_out"] = model.structure_encoder.qformer(z.permute(0, 3, 4, 2, 1).flatten(0, 2))
            got[f"{name}_zS_moments"] = model.structure_encoder(z)
            moments = model.dynamics_encoder(z)
            got[f"{name}_zDw_moments"], got[f"{name}_zDh_moments"] = moments[..., :w_d], moments[..., w_d:]

            encoded = model.encode(video)
            # The original keeps z_S channels-last: (B, n_q, h_S, w_S, d_S).
            got[f"{name}_zS_mean"] = encoded.structure_dist.mean.permute(0, 2, 3, 4, 1)
            got[f"{name}_zS_logvar"] = encoded.structure_dist.logvar.permute(0, 2, 3, 4, 1)
            for stat in ("mean", "logvar"):
                value = getattr(encoded.dynamics_dist, stat)
                got[f"{name}_zDw_{stat}"], got[f"{name}_zDh_{stat}"] = value[..., :w_d], value[..., w_d:]
            got[f"{name}_recon"] = model.decode(encoded.latent_dist.mode()).sample
            got[f"{name}_kl_total"] = encoded.latent_dist.kl()

        z_a = model.encode(inputs["video_a"]).latent_dist.mode()
        structure, dynamics = model.unpack_latents(z_a)
        got["a_u_S"] = model.structure_decoder(structure)
        got["a_u_Dw"], got["a_u_Dh"] = model.dynamics_decoder(dynamics)
        got["a_recon_structure_only"] = model.decode(z_a, part="structure").sample
        got["a_recon_dynamics_only"] = model.decode(z_a, part="dynamics").sample
        got["cross_recon_Sa_Db"] = model.reenact(inputs["video_a"], inputs["video_b"]).sample

    assert set(got) == set(expected)
    for key, value in got.items():
        if key.endswith("kl_total"):
            torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=0, msg=key)
        else:
            assert value.shape == expected[key].shape, key
            assert (value - expected[key]).abs().max() <= 1e-4, key


@needs_reference
def test_released_manifest_converts_into_the_released_preset():
    manifest = json.loads((REFERENCE / "released_manifest.json").read_text())
    kwargs = original_config_to_diffusers(manifest["yaml_model_section"])
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    with torch.device("meta"):
        released = AutoencoderVidTwin.from_preset("released")
        from_manifest = AutoencoderVidTwin(**kwargs)
        original = {entry["name"]: torch.empty(entry["shape"]) for entry in manifest["keys"]}
    assert public(from_manifest.config) == public(released.config)

    converted, dropped = convert_state_dict(original)
    ours = released.state_dict()
    assert set(converted) == set(ours)
    assert all(converted[key].shape == ours[key].shape for key in ours)
    assert sorted(dropped) == sorted(
        key for key in original
        if key.startswith(("encoder.final_layer.", "decoder.x_embedder.")) or ".pos_embed" in key
    )


def test_config_mapping_by_meaning():
    section = {
        "target": "vidtwin.models.vidtwin_ae.VidAutoEncoderQformerCompactSymVidVAE",
        "params": {
            "expect_ch": 4, "cont_num_blocks": 2, "downsample_motion": False, "motion_num_blocks": 1, "d_dim": 6,
            "init_ch": 48, "monitor": "val/rec_loss", "loss_config": {"target": "x"},
            "temporal_qformer_config": {"params": {"num_query_tokens": 4, "query_hidden_size": 16,
                                                   "encoder_hidden_size": 96}},
            "encoder_config": {"params": {"in_channels": 3, "input_size": [8, 112, 112], "patch_size": [2, 16, 16],
                                          "hidden_size": 96, "depth": 3, "num_heads": 6, "temporal_casual": True}},
            "decoder_config": {"params": {"in_channels": 3, "input_size": [8, 112, 112], "patch_size": [2, 16, 16],
                                          "hidden_size": 96, "depth": 5, "num_heads": 6, "temporal_casual": True}},
        },
    }
    kwargs = original_config_to_diffusers(section)
    assert (kwargs["num_encoder_layers"], kwargs["num_decoder_layers"], kwargs["hidden_size"]) == (3, 5, 96)
    assert (kwargs["sample_size"], kwargs["patch_size"], kwargs["patch_size_t"], kwargs["num_frames"]) == (112, 16, 2, 8)
    assert (kwargs["structure_down_blocks"], kwargs["dynamics_down_blocks"], kwargs["structure_base_channels"]) == (2, 0, 48)
    model = AutoencoderVidTwin(**kwargs)
    # 7x7 grid, two down-blocks: 7 -> 4 -> 2; decoding goes 2 -> 4 -> 8 and is cropped to 7.
    assert model.structure_latent_shape == (4, 4, 2, 2) and model.dynamics_latent_shape == (6, 4, 14)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 8, 112, 112)).sample.shape == (1, 3, 8, 112, 112)

    for mutate, message in [
        (lambda p: p.update(shuffle_content=True), "shuffle_content"),
        (lambda p: p.update(mystery=1), "mystery"),
        (lambda p: p["decoder_config"]["params"].update(hidden_size=64), "differ in hidden_size"),
        (lambda p: p["temporal_qformer_config"]["params"].update(encoder_hidden_size=8), "encoder_hidden_size"),
    ]:
        broken = copy.deepcopy(section)
        mutate(broken["params"])
        with pytest.raises(ValueError, match=message):
            original_config_to_diffusers(broken)


class DictConfig:
    """Stands in for omegaconf.dictconfig.DictConfig, which Lightning pickles into `hyper_parameters`."""

    def __init__(self, content):
        self.content = content


DictConfig.__module__ = "omegaconf.dictconfig"


@needs_reference
def test_lightning_checkpoint_with_metadata_and_loss_keys(tmp_path, tiny_original, monkeypatch):
    section, state_dict = tiny_original
    # A hyper-parameter container from a package that is not installed here (as OmegaConf objects are).
    package, module = types.ModuleType("omegaconf"), types.ModuleType("omegaconf.dictconfig")
    module.DictConfig, package.dictconfig = DictConfig, module
    monkeypatch.setitem(sys.modules, "omegaconf", package)
    monkeypatch.setitem(sys.modules, "omegaconf.dictconfig", module)
    checkpoint = {
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": {**state_dict, "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.ones(2)},
        "hyper_parameters": DictConfig({"lr": 1e-4}),
    }
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "omegaconf.dictconfig")  # loading must not need it
    monkeypatch.delitem(sys.modules, "omegaconf")

    model = convert_vidtwin_checkpoint(section, path)
    reference = convert_vidtwin_checkpoint(section, REFERENCE / "tiny" / "weights.safetensors")
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(p, q), name


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_crafted_pickle_is_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {"state_dict": {"conv_in.weight": torch.zeros(1)}, "callbacks": _RunsCode(marker)}
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_original_checkpoint(path)
    assert not marker.exists()


@needs_reference
def test_unknown_missing_and_mismatched_keys_are_named(tmp_path, tiny_original):
    section, state_dict = tiny_original
    cases = [
        ({**state_dict, "mystery_module.weight": torch.zeros(1)}, "mystery_module.weight"),
        ({k: v for k, v in state_dict.items() if k != "motion_head.bias"}, "dynamics_encoder.conv_out.bias"),
        ({**state_dict, "motion_head.bias": torch.zeros(5)}, "shape mismatches: dynamics_encoder.conv_out.bias"),
    ]
    for index, (broken, message) in enumerate(cases):
        path = tmp_path / f"broken{index}.safetensors"
        save_file(broken, path)
        with pytest.raises(ValueError, match=message):
            convert_vidtwin_checkpoint(section, path)
    # A config whose token grid disagrees with the stored sin-cos tables is caught before loading.
    wrong = copy.deepcopy(section)
    for part in ("encoder_config", "decoder_config"):
        wrong["params"][part]["params"]["input_size"] = [8, 64, 64]
    with pytest.raises(ValueError, match="does not match the token grid"):
        convert_vidtwin_checkpoint(wrong, REFERENCE / "tiny" / "weights.safetensors")
