"""Checks on where a command will write, made before the work starts rather than after it.

Every command that writes (training, encoding, conversion, generation, evaluation) calls
`ensure_writable_dir` on its output folder first, so a read-only or mistyped destination fails in a second
with a message that names it, instead of after hours of work.
"""

import os
import tempfile
from pathlib import Path


class OutputPathError(ValueError):
    """The destination a command was given cannot be written."""


def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create `path` (and its parents) if needed and prove it writable by creating and removing a file there.

    Returns the path. Raises `OutputPathError` naming the path when it is a file, cannot be created or cannot
    be written to.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {str(path)!r} exists and is not a folder: pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise OutputPathError(f"{what} {str(path)!r} is not writable ({error.strerror or error}): "
                              "choose a folder you can write to") from error
    return path
