"""The `vidtwin-gen` entry point: its usage, unknown commands, and that listing commands imports no model code."""

import subprocess
import sys

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
