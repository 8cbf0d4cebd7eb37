"""The `vidtwin-gen` entry point: its usage, unknown commands, that listing commands imports no model code, and
how failures are reported (one line, status 2, the traceback with --debug)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidtwin_gen.cli import COMMANDS, main


def test_usage_lists_every_command(capsys):
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert main(["trian-vae"]) == 2
    assert "unknown command 'trian-vae'" in capsys.readouterr().err


def test_help_imports_no_model_code():
    check = "import sys, vidtwin_gen.cli; vidtwin_gen.cli.main(['--help']); print(sorted({'diffusers', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_package_exports_resolve_on_first_use():
    import vidtwin_gen

    assert vidtwin_gen.AutoencoderVidTwin.__name__ == "AutoencoderVidTwin"
    assert vidtwin_gen.ModelMixin.__module__.startswith("diffusers")  # what diffusers' pipeline loader looks up
    assert "VidTwinPipeline" in dir(vidtwin_gen)


# ------------------------------------------------------------------ failures: one line, status 2, traceback on demand

FAKE_COMMAND = '''
import argparse

def main(argv):
    kind = argv[0]
    if kind == "value":
        raise ValueError("--size must be positive, got -3:\\n  pass a size >= 1")
    if kind == "key":
        raise KeyError(101)
    if kind == "interrupt":
        raise KeyboardInterrupt
    if kind == "worker":
        raise RuntimeError("Caught ValueError in DataLoader worker process 0.\\nOriginal Traceback (most recent call last):\\n"
                           "  File \\"x.py\\", line 1, in f\\nValueError: bad clip")
    if kind == "debug-arg":
        return 7 if argv[1:] == ["--", "--debug"] else 1
    argparse.ArgumentParser(prog="vidtwin-gen fake").parse_args(argv)  # an argparse error exits 2 itself
'''


@pytest.fixture
def fake_command(tmp_path, monkeypatch):
    (tmp_path / "vidtwin_fake_command.py").write_text(FAKE_COMMAND)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "fake", ("vidtwin_fake_command", "a command that fails on demand"))
    monkeypatch.delenv("VIDTWIN_GEN_DEBUG", raising=False)
    return "fake"


@pytest.mark.parametrize(
    ("kind", "message"),
    [("value", "--size must be positive, got -3: pass a size >= 1"), ("key", "KeyError: 101"),
     ("worker", "ValueError: bad clip")],
)
def test_failure_is_one_line_and_status_2(fake_command, capsys, kind, message):
    assert main([fake_command, kind]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"vidtwin-gen fake: error: {message} (add --debug for the traceback)"]


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback(fake_command, monkeypatch, where):
    argv = {"before": ["--debug", fake_command, "key"], "after": [fake_command, "key", "--debug"], "env": [fake_command, "key"]}
    if where == "env":
        monkeypatch.setenv("VIDTWIN_GEN_DEBUG", "1")
    with pytest.raises(KeyError):
        main(argv[where])


def test_interrupt_exits_130_quietly(fake_command, capsys):
    assert main([fake_command, "interrupt"]) == 130
    assert capsys.readouterr().err == ""


def test_argparse_keeps_its_exit_codes_and_debug_after_dashdash_is_the_command_s(fake_command, capsys):
    with pytest.raises(SystemExit) as raised:
        main([fake_command, "--no-such-option"])
    assert raised.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main([fake_command, "--help"])
    assert raised.value.code == 0
    assert main([fake_command, "debug-arg", "--", "--debug"]) == 7


def test_real_command_failure_from_the_console_script(tmp_path):
    # eval-recon on a folder that holds no model: one line naming the problem, exit status 2, no traceback.
    script = Path(sys.executable).with_name("vidtwin-gen")
    command = [str(script), "eval-recon", "--vae", str(tmp_path), "--video-dir", str(tmp_path),
               "--output", str(tmp_path / "out" / "recon.json")]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environment.pop("VIDTWIN_GEN_DEBUG", None)
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("vidtwin-gen")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and errors[0].startswith("vidtwin-gen eval-recon: error: ")
    assert "Traceback" not in result.stderr
