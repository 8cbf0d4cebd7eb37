"""benchmarks/bench_long_video.py: its seam measure, and a whole run at tiny size (random pipeline, tiny data)."""

import json

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from helpers import load_benchmark, perturb_

from vidtwin_gen import AutoencoderVidTwin, VidTwinPipeline, VidTwinTransformer3DModel


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_long_video")


def test_seams_are_the_steps_across_chunk_boundaries(bench):
    # Two videos of 6 frames, chunks of 2: steps 0->1, 2->3, 4->5 inside, 1->2 and 3->4 across seams.
    frames = np.zeros((2, 6, 1, 1, 3))
    frames[:, 2:4] += 0.5  # jumps of 0.5 at both seams, nothing inside
    frames[:, 3] += 0.1  # ... except 0.1 inside the second chunk (and 0.1 less at the second seam)
    stats = bench.seam_statistics(frames, 2, reach=1)
    assert stats["seam_count"] == 4 and stats["inside_count"] == 6
    assert stats["seam_sum"] == pytest.approx(2 * (0.5 + 0.6)) and stats["inside_sum"] == pytest.approx(2 * 0.1)
    # One step each side: the seams' own steps (offset 0) and the steps after them (2->3, 4->5).
    assert stats["near_counts"] == [4, 4]
    assert stats["near_sums"] == pytest.approx([2 * (0.5 + 0.6), 2 * 0.1])
    both = bench.add_statistics(stats, stats)
    assert both["seam_count"] == 8 and both["near_sums"] == pytest.approx([4.4, 0.4])
    ratios = bench.seam_ratio(stats)
    assert ratios["seam_ratio"] == pytest.approx(0.55 / (0.2 / 6))
    assert ratios["near_seam_max_ratio"] == pytest.approx(ratios["seam_ratio"])


def test_near_seam_steps_of_longer_chunks():
    # Chunks of 8 frames, 3 chunks, reach 2: steps ending at frames 7, 8, 9, 10 (seam 8) and 15-18 (seam 16).
    frames = np.zeros((1, 24, 1, 1, 3))
    frames[0, 9:] += 1.0  # one jump: the step 8 -> 9 (offset 1 after seam 8)
    stats = load_benchmark("bench_long_video").seam_statistics(frames, 8, reach=2)
    assert stats["near_counts"] == [2, 2, 2, 2]
    assert stats["near_sums"] == [0.0, 0.0, 1.0, 0.0]  # offsets -1, 0, 1, 2
    assert stats["seam_sum"] == 0.0 and stats["inside_sum"] == 1.0


def test_reference_seams_of_steady_motion_and_of_chunkwise_reconstructions(bench):
    # A clip that brightens by the same step every frame has no seams: ratio 1. Its chunk-by-chunk reconstruction
    # through a (random) autoencoder gets a finite ratio of its own.
    torch.manual_seed(0)
    vae = AutoencoderVidTwin.from_preset("tiny").eval()  # 8-frame chunks of 32x32
    ramp = torch.linspace(-0.8, 0.8, 16)[None, :, None, None].expand(3, 16, 32, 32)
    references = bench.reference_seams([ramp, ramp.flip(1)], vae, chunk_frames=8, blend_num_frames=2)
    assert references["real clips"]["seam_ratio"] == pytest.approx(1.0)
    assert references["real clips"]["near_seam_max_ratio"] == pytest.approx(1.0)
    plain = references["reconstructions, chunks decoded on their own"]
    blended = references["reconstructions, seams blended (2 frames a side)"]
    for reconstructed in (plain, blended):
        assert np.isfinite(reconstructed["seam_ratio"]) and reconstructed["seam_mean_abs_diff"] > 0
    assert blended["seam_mean_abs_diff"] != plain["seam_mean_abs_diff"]


@pytest.mark.slow
def test_a_tiny_run_prints_and_writes_both_variants(bench, make_embedded, tmp_path, capsys):
    # I3D needs >= 9 frames per clip: a tiny VAE of 16 frames, a context model of one chunk, 2 chunks per video.
    torch.manual_seed(0)
    vae = perturb_(AutoencoderVidTwin.from_preset("tiny", num_frames=16)).eval()
    transformer = perturb_(VidTwinTransformer3DModel.from_preset(
        "tiny", num_classes=3, num_context_chunks=1, dynamics_latent_shape=vae.dynamics_latent_shape))
    pipe = VidTwinPipeline(vae=vae, transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(),
                           id2label={0: "RedSquareBounce", 1: "RedSquareSpin", 2: "BlueCircleBounce"})
    pipe.save_pretrained(tmp_path / "pipe")
    data = make_embedded(num_frames=100, num_groups=3, clips_per_group=1)  # 33 frames at 8 fps: 2 chunks
    output = tmp_path / "long.json"
    assert bench.main(["--pipeline", str(tmp_path / "pipe"), "--data-root", str(data), "--num-frames", "32",
                       "--samples-per-class", "1", "--probe-videos-per-class", "1", "--num-inference-steps", "1",
                       "--guidance-scale", "2", "--json", str(output)]) == 0
    printed = capsys.readouterr().out
    (tmp_path.parent / "bench_long_video_tiny.txt").write_text(printed)  # to look at after a run
    assert "seam |diff| / inside |diff|" in printed and "FVD 32 frames" in printed and "FVD 16 frames" in printed
    report = json.loads(output.read_text())
    assert report["protocol"]["chunks"] == 2 and report["protocol"]["real"]["padded"] == 0
    context, independent = report["results"]["context (1 chunk(s))"], report["results"]["independent chunks"]
    for result in (context, independent):
        assert result["num_seams"] == 3 and result["seam_ratio"] > 0 and result["near_seam_max_ratio"] > 0
        assert result["chunks_decoded_on_their_own"]["seam_ratio"] != result["seam_ratio"]
        assert len(result["class_accuracy_per_chunk"]) == 2
        assert set(result["class_accuracy_per_chunk"][0]) == {"real", "reconstruction"}
        assert result["fvd_long"]["num_generated"] == 3 and result["fvd_long"]["num_real"] == 3
    assert context["fvd_long"]["fvd"] != independent["fvd_long"]["fvd"]
    assert set(report["references"]) == {"real clips", "reconstructions, chunks decoded on their own",
                                         "reconstructions, seams blended (4 frames a side)"}
    assert "reference, reconstructions, seams blended (4 frames a side): seam" in printed
    assert "seam ratio, chunks decoded on their own" in printed
