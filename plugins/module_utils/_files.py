# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: files that readers see whole or not at all.

A file the collection replaces (a signed image list, the metrics state, a lock record) is
written to a temporary file in the same directory, flushed to disk, then renamed over the old
one; a reader sees the old content or the new, never half of it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Union


def write_atomic(path: str, data: Union[bytes, str], mode: int = 0o644, makedirs: bool = False) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` through a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    if makedirs:
        os.makedirs(directory, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort: some file systems refuse it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
