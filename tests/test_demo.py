"""The quickstart's code path end to end, with a few training steps (the real run is `make demo`)."""

import json

import pytest
from diffusers import DiffusionPipeline

from vidtwin_gen.data.embedded import CLASSES
from vidtwin_gen.demo import main


@pytest.mark.slow
def test_demo_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--output-dir", str(out), "--vae-steps", "2", "--dit-steps", "2", "--samples-per-class", "1",
                 "--probe-videos-per-class", "1", "--videos-per-class", "1"]) == 0
    first = capsys.readouterr().out

    names = [cls.name for cls in CLASSES]
    assert sorted(p.stem for p in (out / "samples").glob("*.mp4")) == sorted(f"{name}_00" for name in names)
    assert sorted(p.stem for p in (out / "samples").glob("*.gif")) == sorted(f"{name}_00" for name in names)
    assert (out / "samples.png").stat().st_size > 0 and (out / "decoupling.png").stat().st_size > 0
    assert len(list((out / "decoupling").glob("*.mp4"))) == 7 and (out / "decoupling.gif").stat().st_size > 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["reconstruction"]["clips"] == 60 and 0 < metrics["reconstruction"]["psnr"] < 100
    # FVD of one sample per class against one held-out clip per class, with its interval.
    fvd = metrics["fvd"]
    assert (fvd["num_real"], fvd["num_generated"]) == (10, 10) and 0 <= fvd["low"] <= fvd["high"] and fvd["fvd"] > 0
    # The clip statistics the decoupling read-out uses, fitted on real clips and on reconstructions (every held-out
    # clip: 60); the I3D probes only when asked for (below).
    check_sample_class_accuracy(metrics["sample_class_accuracy_statistics"], num_test=60)
    assert "sample_class_accuracy" not in metrics
    assert metrics["sample_class_accuracy_statistics"]["real"]["probe_test_accuracy"] >= 0.9  # reads real clips
    assert "clip-statistics probe" in first and "I3D probe" not in first
    assert "against reconstructions" in first and "interval" in first and "SSIM" in first
    decoupling = metrics["decoupling"]  # eval-decoupling's read-out of the demo's autoencoder
    assert decoupling["num_pairs"] > 0
    assert set(decoupling["rows"]) == {"reconstruction", "structure", "dynamics", "reenactment", "answer"}
    stages = {"data", "vae", "latents", "dit", "samples", "decouple", "metrics"}
    assert set(metrics["wall_time_seconds"]) == stages | {"total"}
    assert f"metrics          {out / 'metrics.json'}" in first

    pipe = DiffusionPipeline.from_pretrained(out / "pipeline", trust_remote_code=True)
    assert sorted(pipe.labels) == sorted(names)

    # A second run finds every stage done and redoes nothing.
    assert main(["--output-dir", str(out)]) == 0
    second = capsys.readouterr().out
    assert all(f"[{stage}] done already, skipped" in second for stage in stages)
    assert json.loads((out / "metrics.json").read_text())["wall_time_seconds"] == metrics["wall_time_seconds"]

    # Without its metrics, a run with --i3d-probes redoes that stage only, adding the I3D probes (one video per class).
    (out / "metrics.json").unlink()
    assert main(["--output-dir", str(out), "--samples-per-class", "1", "--probe-videos-per-class", "1", "--i3d-probes"]) == 0
    third = capsys.readouterr().out
    assert all(f"[{stage}] done already, skipped" in third for stage in stages - {"metrics"})
    with_i3d = json.loads((out / "metrics.json").read_text())
    check_sample_class_accuracy(with_i3d["sample_class_accuracy"], num_test=10)
    assert with_i3d["sample_class_accuracy_statistics"] == metrics["sample_class_accuracy_statistics"]
    assert "I3D probe" in third and with_i3d["fvd"]["fvd"] == pytest.approx(metrics["fvd"]["fvd"])


def check_sample_class_accuracy(accuracy: dict, num_test: int) -> None:
    """One sample per class, scored by a probe fitted on real clips and one fitted on reconstructions."""
    assert set(accuracy) == {"real", "reconstruction"}
    for report in accuracy.values():
        assert report["num_samples"] == 10 and len(report["per_class"]) == 10
        assert all(c["num_samples"] == 1 for c in report["per_class"].values())  # a fixed number per class
        assert 0 <= report["accuracy"] <= 1 and report["probe_num_test"] == num_test


def test_trainers_run_data_parallel_with_the_config_s_global_batch(monkeypatch, tmp_path):
    import subprocess

    from vidtwin_gen import demo
    from vidtwin_gen.training import train_vae

    launched = []
    monkeypatch.setattr(subprocess, "run", lambda command, env: launched.append((command, env)) or
                        subprocess.CompletedProcess(command, 0))
    config = demo.config_path("vae/quickstart.yaml")  # train_batch_size 4
    demo.run_trainer(train_vae, config, ["--data_root", "d"], num_processes=2)
    (command, env), = launched
    assert command[command.index("--num_processes") + 1] == "2"
    assert command[command.index("-m", 3) + 1] == "vidtwin_gen.training.train_vae"
    assert command[-4:] == ["--train_batch_size", "2", "--dataloader_num_workers", "0"]
    assert command[-8:-4] == ["--config", config, "--data_root", "d"]
    assert env["ACCELERATE_USE_CPU"] == "1" and env["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="train_batch_size 4 does not split over 3 processes; pass --num-processes 1"):
        demo.run_trainer(train_vae, config, [], num_processes=3)
    monkeypatch.setattr(subprocess, "run", lambda command, env: subprocess.CompletedProcess(command, 1))
    with pytest.raises(RuntimeError, match="failed in 2 processes .* rerun the demo to resume"):
        demo.run_trainer(train_vae, config, [], num_processes=2)


def test_the_demo_trains_the_decoupled_split_unless_the_original_is_asked_for(monkeypatch, tmp_path):
    from vidtwin_gen import demo

    calls = []
    monkeypatch.setattr(demo, "run_trainer", lambda module, config, arguments, num_processes: calls.append(arguments))
    monkeypatch.setattr(demo, "replace_directory", lambda source, target: None)
    for flags in ([], ["--original-split"]):
        args = demo.build_parser().parse_args(["--output-dir", str(tmp_path), *flags])
        demo.train_autoencoder(tmp_path, tmp_path / "data", args)
    value = lambda name: calls[0][calls[0].index(name) + 1]  # noqa: E731
    assert (value("--dynamics_colour_shuffle"), value("--model.num_queries"),
            value("--model.structure_time_profiles")) == ("true", "3", "linear")
    assert not {"--dynamics_colour_shuffle", "--model.num_queries", "--model.structure_time_profiles"} & set(calls[1])
