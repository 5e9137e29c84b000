"""Files that survive a crash or a power cut whole: written beside their final name, flushed to disk,
renamed over it, and the rename itself made durable, as databases do.

A rename is an entry in the folder; until the folder is flushed too, a power cut can leave the old
entry (or none) behind even though the new file's bytes reached the disk.
"""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomically(path: str, content: bytes | Callable[[BinaryIO], None]) -> None:
    """Replace path with content (bytes, or a function that writes to the open file): either the old
    file or the whole new one is there afterwards, whatever happens, and no temporary file is left."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            if isinstance(content, bytes):
                file.write(content)
            else:
                content(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    sync_folder(folder)


def sync_folder(folder: str) -> None:
    """fsync a folder so that the renames in it are on disk. Windows cannot open a folder for this
    (and its renames are journaled by NTFS), so there it is a no-op."""
    if os.name == "nt":
        return
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
