import json

import numpy as np
import pytest
import torch

from vidtwin_gen.data.ucf101 import load_ucf101
from vidtwin_gen.data.output_paths import OutputPathError
from vidtwin_gen.data.video_io import VideoDecodeError, iter_clips, load_clip, write_video
from vidtwin_gen.evaluation import reconstruction
from vidtwin_gen.evaluation.metrics import psnr, ssim, to_unit_range
from vidtwin_gen.evaluation.reconstruction import main
from vidtwin_gen.models import AutoencoderVidTwin
from vidtwin_gen.evaluation.lpips import FEATURE_CHANNELS, LPIPS


def test_eval_recon_ucf_split_matches_direct_computation(vae_dir, embedded_root, tmp_path, capsys):
    output = tmp_path / "recon.json"
    assert main(["--vae", str(vae_dir), "--data-root", str(embedded_root), "--split", "1", "--subset", "test",
                 "--max-clips", "3", "--batch-size", "2", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert (report["num_clips"], report["num_videos"], report["num_skipped"]) == (3, 3, 0)
    assert report["clip_shape"] == [3, 8, 32, 32] and (report["split"], report["subset"]) == (1, "test")
    assert "lpips" not in report

    # The same three clips, reconstructed and scored by hand.
    paths = load_ucf101(embedded_root, 1, "test")["path"]
    chosen = sorted(torch.randperm(len(paths), generator=torch.Generator().manual_seed(0))[:3].tolist())
    video = torch.stack([load_clip(paths[i], 8, (32, 32), 25.0, mode="center") for i in chosen])
    vae = AutoencoderVidTwin.from_pretrained(vae_dir).eval()
    with torch.no_grad():
        reconstruction = vae(video).sample.clamp(-1, 1)
    real, fake = to_unit_range(video), to_unit_range(reconstruction)
    assert report["psnr"] == pytest.approx(psnr(real, fake).mean().item(), abs=1e-4)
    assert report["ssim"] == pytest.approx(ssim(real, fake).mean().item(), abs=1e-5)

    table = capsys.readouterr().out.splitlines()
    assert "PSNR (dB)" in table[0] and "SSIM" in table[0]
    assert table[1].split() == ["3", f"{report['psnr']:.4f}", f"{report['ssim']:.4f}"]


def test_eval_recon_video_folder_with_lpips(vae_dir, tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder = tmp_path / "videos"
    for i in range(2):  # 20 frames at 25 fps: two consecutive 8-frame clips each, the tail dropped
        write_video(folder / f"clip{i}.mp4", rng.integers(0, 255, (20, 36, 48, 3), dtype=np.uint8), fps=25)
    (folder / "broken.mp4").write_bytes(b"garbage")

    # LPIPS with random weights written in the two file layouts it reads (real ones are not reachable offline).
    torch.manual_seed(0)
    lpips = LPIPS()
    vgg, lin = tmp_path / "vgg16.pth", tmp_path / "lin.pth"
    torch.save({k: v for k, v in lpips.state_dict().items() if k.startswith("features.")}, vgg)
    # Real lin weights are non-negative (LPIPS clamps them in training), so distances are positive.
    torch.save({f"lin{i}.model.1.weight": lpips.lins[i].weight.abs() for i in range(len(FEATURE_CHANNELS))}, lin)

    output = tmp_path / "recon.json"
    assert main(["--vae", str(vae_dir), "--video-dir", str(folder), "--lpips-vgg", str(vgg), "--lpips-lin", str(lin),
                 "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert (report["num_clips"], report["num_videos"], report["num_skipped"]) == (4, 3, 1)
    assert np.isfinite([report["psnr"], report["ssim"], report["lpips"]]).all() and report["lpips"] > 0
    assert "LPIPS" in capsys.readouterr().out.splitlines()[0]

    assert main(["--vae", str(vae_dir), "--video-dir", str(folder), "--max-clips", "3", "--batch-size", "2",
                 "--output", str(output)]) == 0
    assert json.loads(output.read_text())["num_clips"] == 3


def test_eval_recon_argument_errors(vae_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--vae", str(vae_dir), "--video-dir", str(tmp_path), "--lpips-vgg", "vgg.pth"])
    assert "both --lpips-vgg and --lpips-lin" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--vae", str(vae_dir)])  # no data


def test_eval_recon_scores_only_files_that_decode_whole(vae_dir, tmp_path):
    # A file damaged after its first clips: the clips it yields before the damage must not be scored.
    rng = np.random.default_rng(1)
    folder = tmp_path / "videos"
    noise = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    write_video(folder / "good.avi", noise, fps=25)
    write_video(folder / "late_damage.avi", noise, fps=25)
    data = (folder / "late_damage.avi").read_bytes()
    (folder / "late_damage.avi").write_bytes(data[: int(len(data) * 0.8)])  # 3 clips of 8; the third is cut off

    yielded = []
    with pytest.raises(VideoDecodeError):
        for clip in iter_clips(folder / "late_damage.avi", 8, (32, 32), 25.0):
            yielded.append(clip)
    assert len(yielded) >= 1  # the reader hands over clips before it finds the damage

    output = tmp_path / "recon.json"
    assert main(["--vae", str(vae_dir), "--video-dir", str(folder), "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert (report["num_clips"], report["num_videos"], report["num_skipped"]) == (3, 2, 1)


def test_eval_recon_checks_its_output_folder_before_loading_anything(tmp_path, monkeypatch):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(reconstruction.AutoencoderVidTwin, "from_pretrained", must_not_load)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OutputPathError, match="a_file"):
        main(["--vae", str(tmp_path), "--video-dir", str(tmp_path), "--output", str(blocker / "recon.json")])
