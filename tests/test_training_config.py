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


# ------------------------------------------------------------------------------- issue 20: the original's recipe


@dataclass
class Recipe:
    mixed_precision: str | None = None
    max_grad_norm: float | None = 1.0
    use_ema: bool = False
    optimizer: str = "adamw"


def test_words_yaml_1_1_reads_as_booleans_stay_strings_for_string_keys(tmp_path):
    assert parse_config(Recipe, ["--mixed_precision", "no"]).mixed_precision == "no"
    assert parse_config(Recipe, ["--mixed_precision=no"]).mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\nuse_ema: yes\n")
    config = parse_config(Recipe, ["--config", str(path)])
    assert config.mixed_precision == "no" and config.use_ema is True  # a boolean key still reads yes/no


def test_boolean_keys_read_yes_no_and_true_false():
    assert parse_config(Recipe, ["--use_ema", "no"]).use_ema is False
    assert parse_config(Recipe, ["--use_ema", "true"]).use_ema is True
    with pytest.raises(ValueError, match="use_ema"):
        parse_config(Recipe, ["--use_ema", "maybe"])


def test_max_grad_norm_null_turns_clipping_off():
    assert parse_config(Recipe, ["--max_grad_norm", "null"]).max_grad_norm is None
    assert parse_config(Recipe, ["--max_grad_norm", "0.5"]).max_grad_norm == 0.5


def _run_config(**overrides):
    from vidtwin_gen.training.run import RunConfig

    values = dict(learning_rate=1.0, adam_beta1=0.9, adam_beta2=0.99, adam_weight_decay=0.1, adam_epsilon=1e-8,
                  lr_scheduler="constant", lr_warmup_steps=0, max_train_steps=10)
    config = RunConfig(**{k: v for k, v in overrides.items() if k in RunConfig.__dataclass_fields__})
    for key, value in {**values, **overrides}.items():
        setattr(config, key, value)
    return config


def test_optimizer_choice_and_coupled_weight_decay():
    import torch

    from vidtwin_gen.training.run import make_optimizer

    def one_step(name):
        weight = torch.nn.Parameter(torch.tensor([2.0]))
        optimizer = make_optimizer([weight], _run_config(optimizer=name, learning_rate=0.1))
        weight.grad = torch.tensor([0.0])  # only the weight decay moves the weight
        optimizer.step()
        return type(optimizer), optimizer.param_groups[0]["betas"], weight.item()

    adam_class, betas, adam_weight = one_step("adam")
    adamw_class, _, adamw_weight = one_step("adamw")
    assert adam_class is torch.optim.Adam and adamw_class is torch.optim.AdamW and betas == (0.9, 0.99)
    # Adam: the decay enters the gradient (0.2), which Adam normalises to a full step of lr: 2 - 0.1.
    assert adam_weight == pytest.approx(1.9, abs=1e-6)
    # AdamW: the weight shrinks by lr * decay (2 * (1 - 0.01)); the zero gradient moves nothing.
    assert adamw_weight == pytest.approx(1.98, abs=1e-6)
    with pytest.raises(ValueError, match="optimizer must be one of .*'sgd'"):
        make_optimizer([torch.nn.Parameter(torch.zeros(1))], _run_config(optimizer="sgd"))


def _learning_rates(config, steps: int, num_processes: int = 1) -> list[float]:
    import torch

    from vidtwin_gen.training.run import make_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    scheduler = make_lr_scheduler(optimizer, config, num_processes)
    rates = []
    for _ in range(steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_original_schedules():
    rates = _learning_rates(_run_config(lr_scheduler="inverse_sqrt", lr_warmup_steps=4), 9)
    assert rates == pytest.approx([0, 0.25, 0.5, 0.75, 1, (4 / 5) ** 0.5, (4 / 6) ** 0.5, (4 / 7) ** 0.5, (4 / 8) ** 0.5])
    cosine = _run_config(lr_scheduler="warmup_cosine", lr_warmup_steps=2, max_train_steps=6,
                         lr_warmup_start_factor=0.2, lr_min_factor=0.1)
    assert _learning_rates(cosine, 8) == pytest.approx([0.2, 0.6, 1.0, 0.1 + 0.45 * (1 + 2 ** -0.5), 0.55,
                                                        0.1 + 0.45 * (1 - 2 ** -0.5), 0.1, 0.1])
    with pytest.raises(ValueError, match="inverse_sqrt needs lr_warmup_steps >= 1"):
        _learning_rates(_run_config(lr_scheduler="inverse_sqrt", lr_warmup_steps=0), 1)


def test_diffusers_warmup_starts_at_zero_as_documented():
    assert _learning_rates(_run_config(lr_scheduler="constant_with_warmup", lr_warmup_steps=2), 4) == [0, 0.5, 1, 1]


def test_schedules_count_one_step_per_process_per_update():
    one = _learning_rates(_run_config(lr_scheduler="inverse_sqrt", lr_warmup_steps=4), 9)
    # A prepared scheduler steps once per process: with 2 processes every other value is one update.
    two = _learning_rates(_run_config(lr_scheduler="inverse_sqrt", lr_warmup_steps=4), 18, num_processes=2)
    assert two[::2] == pytest.approx(one)
