"""The generate / interpolate / reconstruct / reenact commands check their output folder before any work."""

import pytest

from vidtwin_gen.data.output_paths import OutputPathError
from vidtwin_gen.generate import main_generate, main_interpolate, main_reconstruct, main_reenact


@pytest.mark.parametrize("command, arguments", [
    (main_generate, ["--pipeline", "MISSING", "--class-label", "a"]),
    (main_interpolate, ["--pipeline", "MISSING", "--videos", "a.avi", "b.avi"]),
    (main_reconstruct, ["--vae", "MISSING", "--video", "a.avi"]),
    (main_reenact, ["--vae", "MISSING", "--structure-video", "a.avi", "--dynamics-video", "b.avi"]),
])
def test_an_unwritable_output_folder_is_named_before_models_are_loaded(command, arguments, tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    # The model folders do not exist either: the output folder must be the first thing checked.
    with pytest.raises(OutputPathError, match="--output-dir .*file"):
        command([item.replace("MISSING", str(tmp_path / "missing")) for item in arguments]
                + ["--output-dir", str(not_a_folder)])
