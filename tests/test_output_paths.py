import os

import pytest

from vidtwin_gen.data.output_paths import OutputPathError, ensure_writable_dir


def test_creates_missing_folders(tmp_path):
    target = tmp_path / "a" / "b"
    assert ensure_writable_dir(target) == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_refuses_a_file(tmp_path):
    file = tmp_path / "file.txt"
    file.write_text("x")
    with pytest.raises(OutputPathError, match="not a folder"):
        ensure_writable_dir(file)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders; permission bits cannot be tested")
def test_refuses_a_read_only_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            ensure_writable_dir(tmp_path / "out")
    finally:
        tmp_path.chmod(0o700)


def test_refuses_an_uncreatable_path(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="not writable"):
        ensure_writable_dir(tmp_path / "file" / "sub")
