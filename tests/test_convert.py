"""Checkpoint conversion: numerical parity with the original code, key mapping, config mapping, safety."""

import copy
import json
import os
import pickle
import re
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidtwin_gen import AutoencoderVidTwin
from vidtwin_gen.convert import (
    CheckpointError,
    UnsafeCheckpointError,
    convert_state_dict,
    convert_vidtwin_checkpoint,
    load_original_checkpoint,
    load_original_config,
    main,
    original_config_to_diffusers,
)
from vidtwin_gen.data.output_paths import OutputPathError
from vidtwin_gen.models.hub import NonFiniteWeightsError

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


# ---------------------------------------------------------------------------------------------- bad files


def _bad_checkpoints(folder: Path) -> dict[str, Path]:
    """name -> a file that is not a usable checkpoint, each made here."""
    files = {"text": folder / "notes.ckpt", "empty": folder / "empty.ckpt", "hostile_zip": folder / "hostile.ckpt",
             "junk_safetensors": folder / "junk.safetensors", "foreign_zip": folder / "foreign.ckpt",
             "list": folder / "list.pt", "missing": folder / "missing.ckpt", "folder": folder / "a_folder.ckpt"}
    files["text"].write_text("this is not a checkpoint\n" * 5)
    files["empty"].write_bytes(b"")
    # torch's zip layout around a pickle with an opcode the weights-only unpickler does not support
    with zipfile.ZipFile(files["hostile_zip"], "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02Vhello\n.")
        archive.writestr("archive/version", b"3\n")
    files["junk_safetensors"].write_bytes(bytes(range(256)) * 4)
    with zipfile.ZipFile(files["foreign_zip"], "w") as archive:
        archive.writestr("readme.txt", "hello")
    torch.save([1, 2, 3], files["list"])
    files["folder"].mkdir()
    return files


def test_every_bad_checkpoint_is_one_clear_line_naming_the_file(tmp_path):
    section = original_config_section()
    for kind, path in _bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as error:
            load_original_checkpoint(path)
        message = str(error.value)
        assert isinstance(error.value, ValueError), kind
        assert str(path) in message and "\n" not in message, (kind, message)
        # the same error through the converter and through from_single_file
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            convert_vidtwin_checkpoint(section, path)
        with pytest.raises(CheckpointError, match=re.escape(str(path))):
            AutoencoderVidTwin.from_single_file(path, original_config=section)
    with pytest.raises(UnsafeCheckpointError, match="refusing to unpickle"):
        load_original_checkpoint(tmp_path / "hostile.ckpt")


def original_config_section() -> dict:
    """A small original `model:` section (the mapping test's), no reference files needed."""
    return {
        "target": "vidtwin.models.vidtwin_ae.VidAutoEncoderQformerCompactSymVidVAE",
        "params": {
            "expect_ch": 4, "cont_num_blocks": 1, "downsample_motion": True, "motion_num_blocks": 1, "d_dim": 4,
            "init_ch": 32,
            "temporal_qformer_config": {"params": {"num_query_tokens": 8, "query_hidden_size": 32}},
            "encoder_config": {"params": {"in_channels": 3, "input_size": [8, 32, 32], "patch_size": [1, 8, 8],
                                          "hidden_size": 64, "depth": 2, "num_heads": 4, "temporal_casual": True}},
            "decoder_config": {"params": {"in_channels": 3, "input_size": [8, 32, 32], "patch_size": [1, 8, 8],
                                          "hidden_size": 64, "depth": 2, "num_heads": 4, "temporal_casual": True}},
        },
    }


def test_bad_original_configs_name_the_problem(tmp_path):
    cases = {
        "broken.yaml": ("model: {params: [unclosed", "cannot be read as YAML"),
        "broken.json": ("{not json", "cannot be read as JSON"),
        "no_params.yaml": ("model:\n  target: x\n", "expected the original config's `model:` section"),
        "missing_key.json": (json.dumps({"model": {"target": "x", "params": {"expect_ch": 4}}}), "missing key"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CheckpointError, match=message) as error:
            convert_vidtwin_checkpoint(tmp_path / name, tmp_path / "unused.ckpt")
        assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_original_config(tmp_path / "nowhere.yaml")
    bad_sizes = original_config_section()
    bad_sizes["params"]["encoder_config"]["params"]["num_heads"] = 0
    bad_sizes["params"]["decoder_config"]["params"]["num_heads"] = 0
    torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}}, tmp_path / "tiny.ckpt")
    with pytest.raises(ValueError, match="num_attention_heads=0 is out of range"):
        convert_vidtwin_checkpoint(bad_sizes, tmp_path / "tiny.ckpt")


def test_output_folder_is_checked_before_loading(tmp_path):
    section = original_config_section()
    missing_checkpoint = tmp_path / "does_not_exist.ckpt"
    as_file = tmp_path / "out_file"
    as_file.write_text("I am a file")
    with pytest.raises(OutputPathError, match="not a folder"):
        convert_vidtwin_checkpoint(section, missing_checkpoint, as_file)
    with pytest.raises(OutputPathError, match="not a folder"):
        convert_vidtwin_checkpoint(section, missing_checkpoint, as_file / "inside")
    if os.geteuid() != 0:  # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(OutputPathError, match="not writable"):
                convert_vidtwin_checkpoint(section, missing_checkpoint, locked / "out")
        finally:
            locked.chmod(0o700)


@needs_reference
def test_nan_weights_are_refused_at_conversion(tmp_path, tiny_original):
    section, state_dict = tiny_original
    broken = dict(state_dict)
    broken["motion_head.weight"] = broken["motion_head.weight"].clone()
    broken["motion_head.weight"].view(-1)[3] = float("inf")
    save_file(broken, tmp_path / "nan.safetensors")
    with pytest.raises(NonFiniteWeightsError, match=r"'motion_head\.weight'.*1 NaN/Inf"):
        convert_vidtwin_checkpoint(section, tmp_path / "nan.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # Unused training-only keys may hold anything.
    save_file({**state_dict, "loss.logvar": torch.tensor([float("nan")])}, tmp_path / "loss_nan.safetensors")
    convert_vidtwin_checkpoint(section, tmp_path / "loss_nan.safetensors")


@needs_reference
def test_convert_is_atomic(tmp_path, tiny_original, monkeypatch):
    section, _ = tiny_original
    weights = REFERENCE / "tiny" / "weights.safetensors"
    out = tmp_path / "converted"
    convert_vidtwin_checkpoint(section, weights, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(self, save_directory, *args, **kwargs):
        (Path(save_directory) / "config.json").write_text("{}")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(AutoencoderVidTwin, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_vidtwin_checkpoint(section, weights, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old conversion is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no partial folder left behind
    with pytest.raises(OSError, match="No space left"):
        convert_vidtwin_checkpoint(section, weights, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


@needs_reference
def test_from_single_file_equals_the_converter(tmp_path, tiny_original):
    section, state_dict = tiny_original
    config_path = REFERENCE / "tiny" / "reference_config.json"
    out = tmp_path / "converted"
    assert main(["--original-config", str(config_path), "--checkpoint", str(REFERENCE / "tiny" / "weights.safetensors"),
                 "--output-dir", str(out)]) == 0
    converted = AutoencoderVidTwin.from_pretrained(out)
    # from a Lightning .ckpt as well as from safetensors, with the config as a path or a dict
    torch.save({"state_dict": state_dict, "epoch": 1}, tmp_path / "last.ckpt")
    for checkpoint, original_config in ((REFERENCE / "tiny" / "weights.safetensors", config_path),
                                        (tmp_path / "last.ckpt", section)):
        single = AutoencoderVidTwin.from_single_file(checkpoint, original_config=original_config)
        assert not single.training
        public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
        assert public(single.config) == public(converted.config)
        assert single.state_dict().keys() == converted.state_dict().keys()
        for (name, p), (_, q) in zip(single.state_dict().items(), converted.state_dict().items()):
            assert torch.equal(p, q), name
    half = AutoencoderVidTwin.from_single_file(tmp_path / "last.ckpt", original_config=section, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="only dtype"):
        AutoencoderVidTwin.from_single_file(tmp_path / "last.ckpt", original_config=section, token="x")
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "Provenance" in card and "from_single_file" in card
