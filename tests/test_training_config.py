"""Training configs (YAML + --key value overrides) and checkpoint folders."""

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from accelerate import Accelerator

from vidtwin_gen.training.checkpointing import (
    checkpoint_step,
    list_checkpoints,
    replace_directory,
    resolve_resume,
    save_checkpoint,
)
from vidtwin_gen.training.config import parse_config, save_config
from vidtwin_gen.training.run import resume


@dataclass
class Example:
    output_dir: str = "runs/x"
    learning_rate: float = 1e-4
    max_train_steps: int = 10
    use_ema: bool = False
    max_train_minutes: float | None = None
    resume_from_checkpoint: str | None = None
    validation_conditions: list = field(default_factory=list)
    model: dict = field(default_factory=lambda: {"preset": "tiny", "hidden_size": 64}, metadata={"help": "model keys"})


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("learning_rate: 3e-4\nmax_train_steps: 50\nmodel: {preset: paper}\n")
    config = parse_config(
        Example,
        ["--config", str(path), "--max_train_steps", "7", "--use_ema", "--model.hidden_size=128",
         "--resume-from-checkpoint", "latest", "--validation_conditions", "[a, b]", "--max_train_minutes", "none"],
    )
    assert config.learning_rate == pytest.approx(3e-4) and isinstance(config.learning_rate, float)  # YAML reads 3e-4 as str
    assert config.max_train_steps == 7 and config.use_ema is True and config.resume_from_checkpoint == "latest"
    assert config.model == {"preset": "paper", "hidden_size": 128}  # the YAML's preset, the override's width
    assert config.validation_conditions == ["a", "b"] and config.max_train_minutes is None


def test_values_are_kept_as_written():
    # Dashes in keys mean underscores; in values they are the user's.
    config = parse_config(Example, ["--output-dir=runs/my-run", "--learning_rate=-1e-3"])
    assert config.output_dir == "runs/my-run" and config.learning_rate == pytest.approx(-1e-3)


def test_partial_dict_override_keeps_defaults():
    assert parse_config(Example, ["--model.num_layers", "3"]).model == {"preset": "tiny", "hidden_size": 64, "num_layers": 3}


def test_bad_keys_and_values_are_named(tmp_path):
    with pytest.raises(ValueError, match="learning_rte \\(did you mean learning_rate"):
        parse_config(Example, ["--learning_rte", "1"])
    with pytest.raises(ValueError, match="'max_train_steps': cannot read 'many'"):
        parse_config(Example, ["--max_train_steps", "many"])
    with pytest.raises(ValueError, match="'use_ema': cannot read 'maybe'"):
        parse_config(Example, ["--use_ema", "maybe"])
    with pytest.raises(ValueError, match="overrides look like --key value"):
        parse_config(Example, ["stray"])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_config(Example, ["--config", str(tmp_path / "list.yaml")])


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit):
        parse_config(Example, ["--help"], "Example trainer")
    text = capsys.readouterr().out
    assert "Example trainer" in text and "--learning_rate (default: 0.0001)" in text and "model keys" in text


def test_saved_config_reloads(tmp_path):
    config = parse_config(Example, ["--max_train_steps", "3"])
    save_config(config, tmp_path / "train_config.yaml")
    assert parse_config(Example, ["--config", str(tmp_path / "train_config.yaml")]) == config
    assert yaml.safe_load((tmp_path / "train_config.yaml").read_text())["max_train_steps"] == 3


def test_checkpoint_folders(tmp_path):
    for name in ("checkpoint-10", "checkpoint-200", "checkpoint-30", ".checkpoint-300.partial", "vae", "checkpoint-x"):
        (tmp_path / name).mkdir()
    # A save that was killed half-way leaves only a hidden .partial folder, which is never resumed from.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-30", "checkpoint-200"]
    assert resolve_resume(tmp_path, "latest") == tmp_path / "checkpoint-200"
    assert resolve_resume(tmp_path, "checkpoint-30") == tmp_path / "checkpoint-30"
    assert resolve_resume(tmp_path / "empty", "latest") is None and resolve_resume(tmp_path, None) is None
    assert checkpoint_step(tmp_path / "checkpoint-30") == 30
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_resume(tmp_path, "checkpoint-999")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        resolve_resume(tmp_path, "vae")


def test_replace_directory(tmp_path):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "weights").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "weights").write_text("old")
    replace_directory(tmp_path / "new", tmp_path / "out")
    assert (tmp_path / "out" / "weights").read_text() == "new"
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["out"]


def test_resume_plans_the_epochs_and_sets_abandoned_checkpoints_aside(tmp_path):
    accelerator = Accelerator(cpu=True)
    config = SimpleNamespace(seed=0, gradient_accumulation_steps=4, max_train_steps=7, output_dir=tmp_path,
                             resume_from_checkpoint=None)
    # 10 batches with accumulation 4: updates after batches 4, 8 and 10 (the epoch's end), 3 per epoch.
    assert resume(accelerator, config, batches_per_epoch=10) == (0, range(0, 3), 0)
    for step in (3, 5, 6):
        save_checkpoint(accelerator, tmp_path, step, total_limit=None)

    config.resume_from_checkpoint = "checkpoint-5"  # the 2nd update of epoch 1: skip its first 8 batches
    assert resume(accelerator, config, batches_per_epoch=10) == (5, range(1, 3), 8)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-3", "checkpoint-5"]
    assert [p.name for p in (tmp_path / "abandoned-after-5").iterdir()] == ["checkpoint-6"]

    config.resume_from_checkpoint = "checkpoint-3"
    assert resume(accelerator, config, batches_per_epoch=10) == (3, range(1, 3), 0)
    assert [p.name for p in (tmp_path / "abandoned-after-3").iterdir()] == ["checkpoint-5"]
    assert (tmp_path / "abandoned-after-5" / "checkpoint-6").is_dir()  # nothing is deleted

    config.max_train_steps = 3  # a finished run goes straight to its export
    config.resume_from_checkpoint = "latest"
    assert resume(accelerator, config, batches_per_epoch=10) == (3, range(0), 0)
