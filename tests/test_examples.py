"""Every script in examples/ runs, on tiny models and the tiny embedded data set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import perturb_

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.data import load_ucf101

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(
    os.environ.get("VIDTWIN_REFERENCE_DIR", REPO.parent / "shared" / "reference" / "vidtwin")
)


@pytest.fixture(scope="module")
def artifacts(embedded_root, tmp_path_factory):
    """A tiny 16-frame autoencoder and a class-conditional pipeline on the embedded classes."""
    root = tmp_path_factory.mktemp("examples")
    torch.manual_seed(0)
    vae = perturb_(AutoencoderVidTwin.from_preset("tiny", num_frames=16)).eval()  # FVD needs 16 frames
    names = load_ucf101(embedded_root).features["label"].names
    transformer = perturb_(VidTwinTransformer3DModel.from_preset(
        "tiny", dynamics_latent_shape=vae.dynamics_latent_shape, num_classes=len(names)
    )).eval()
    VidTwinPipeline(vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                    id2label=dict(enumerate(names))).save_pretrained(root / "pipeline")
    vae.save_pretrained(root / "vae")
    videos = sorted((embedded_root / "UCF-101").glob("*/*.avi"))
    return {"root": root, "names": names, "videos": [str(videos[0]), str(videos[-1])]}


def run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def example(name: str) -> str:
    return str(REPO / "examples" / name)


def test_reconstruct(artifacts, tmp_path):
    out = run([sys.executable, example("reconstruct.py"), "--vae", str(artifacts["root"] / "vae"),
               "--videos", *artifacts["videos"], "--output-dir", "out"], cwd=tmp_path)
    assert "PSNR" in out and "% of the input" in out
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 8 and len(list((tmp_path / "out").glob("*.gif"))) == 8


def test_generate_through_diffusion_pipeline(artifacts, tmp_path):
    classes = artifacts["names"][:2]
    run([sys.executable, example("generate.py"), "--pipeline", str(artifacts["root"] / "pipeline"),
         "--classes", *classes, "--steps", "2", "--output-dir", "out"], cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == sorted(f"{c}.mp4" for c in classes)


def test_decoupled_control(artifacts, embedded_root, tmp_path):
    out = run([sys.executable, example("decoupled_control.py"), "--pipeline", str(artifacts["root"] / "pipeline"),
               "--video", artifacts["videos"][0], "--classes", *artifacts["names"][:2], "--steps", "2", "--output-dir",
               "out", "--data-root", str(embedded_root)], cwd=tmp_path)
    assert "kept structure: the clip's content in" in out
    assert len(list((tmp_path / "out").glob("kept_structure_*.mp4"))) == 2
    assert len(list((tmp_path / "out").glob("dynamics_path_*.mp4"))) == 5


@pytest.mark.slow
def test_evaluate(artifacts, embedded_root, tmp_path):
    out = run([sys.executable, example("evaluate.py"), "--pipeline", str(artifacts["root"] / "pipeline"),
               "--data-root", str(embedded_root), "--num-clips", "3", "--steps", "2"], cwd=tmp_path)
    assert "reconstruction: PSNR" in out and "FVD" in out.splitlines()[-1]


@pytest.mark.skipif(not (REFERENCE / "tiny" / "weights.safetensors").exists(),
                    reason=f"VidTwin reference fixture not found at {REFERENCE} (set VIDTWIN_REFERENCE_DIR)")
def test_convert_checkpoint(tmp_path):
    out = run([sys.executable, example("convert_checkpoint.py"),
               "--original-config", str(REFERENCE / "tiny" / "reference_config.json"),
               "--checkpoint", str(REFERENCE / "tiny" / "weights.safetensors"), "--output-dir", "converted"], cwd=tmp_path)
    assert "747,800 parameters" in out and (tmp_path / "converted" / "README.md").exists()


@pytest.mark.slow
def test_train_ucf101_script_on_the_embedded_set(embedded_root, tmp_path):
    env = {
        "DATA": str(embedded_root),
        "RUN": str(tmp_path / "run"),
        "LAUNCH": f"{sys.executable} -m accelerate.commands.launch --num_processes 1 --num_machines 1 "
                  "--mixed_precision no --dynamo_backend no",
        "VAE_CONFIG": str(REPO / "train_configs" / "vae" / "quickstart.yaml"),
        "DIT_CONFIG": str(REPO / "train_configs" / "dit" / "quickstart_class.yaml"),
        "EXTRA": "--max_train_steps 2 --train_batch_size 2 --dataloader_num_workers 0 --report_to none",
        "FVD_ARGS": "--num-samples 3 --num-inference-steps 2 --no-cache",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run(["bash", example("train_ucf101.sh")], cwd=REPO, env=env, timeout=900)
    assert (tmp_path / "run" / "dit" / "pipeline" / "model_index.json").exists()
    assert (tmp_path / "run" / "recon.json").exists() and (tmp_path / "run" / "fvd.json").exists()
