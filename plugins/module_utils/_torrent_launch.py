# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: starts the BitTorrent engine from its root-owned directory, after checking it.

The engine (``_torrent_engine``, ``_torrent_seeder`` and the files they import, see
``_torrent_jobs.ENGINE_FILES``) outlives the module that starts it, so it cannot run from the
module's temporary directory. It is installed, by the ``image_cache`` and ``image_seeder``
roles or by the transport itself, into an engine directory (default
``/usr/libexec/batchvirt/torrent-engine``)::

    ENGINE_DIR/launch.py                                         this file
    ENGINE_DIR/ansible_collections/batchvirt/farm/plugins/module_utils/_torrent_engine.py ...

and run as ``python -I -B ENGINE_DIR/launch.py JOBFILE.job`` (one torrent) or ``... --seeds
SEEDS.json`` (the origin seeder); ``... --check`` only checks the directory (the roles run it).
``-I`` keeps PYTHON* variables, the user's site-packages and the script's and current
directories off ``sys.path``; ``-B`` writes no bytecode (the
installer compiles it). Only after :func:`unsafe_paths` has found nothing does this launcher put
ENGINE_DIR first on ``sys.path`` and import the engine: every file and directory of ENGINE_DIR
must belong to root (or to the user running the engine) and be writable by no one else, and so
must every directory above it (a root-owned sticky directory such as ``/tmp`` is accepted above
it). Nobody who can write the state directory, or any other place, can put code into the engine.

Standard library only: this file runs before anything of ENGINE_DIR may be imported.
"""

from __future__ import annotations

import os
import stat
import sys
from typing import List


def _owner_and_mode_problem(path: str, st: os.stat_result, above: bool) -> str:
    if st.st_uid not in (0, os.geteuid()):
        return f"{path} belongs to uid {st.st_uid}, not to root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    sticky = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
    if writable and not (above and sticky):
        return f"{path} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def unsafe_paths(root: str) -> List[str]:
    """Why code under ``root`` cannot be trusted (one sentence per path), or ``[]``.

    Checked: ``root`` exists and is a directory; it, every directory and file below it, and every
    directory above it belong to root or to the current user and are writable by no one else
    (above ``root``, a root-owned sticky directory is accepted); nothing below it is a symbolic
    link.
    """
    real = os.path.realpath(root)
    problems: List[str] = []
    try:
        top = os.stat(real)
    except OSError as exc:
        return [f"{root} does not exist ({exc.strerror})"]
    if not stat.S_ISDIR(top.st_mode):
        return [f"{root} is not a directory"]
    parent = real
    while parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
        problem = _owner_and_mode_problem(parent, os.stat(parent), above=True)
        if problem:
            problems.append(problem)
    for dirpath, dirnames, filenames in os.walk(real):
        problem = _owner_and_mode_problem(dirpath, os.lstat(dirpath), above=False)
        if problem:
            problems.append(problem)
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # a temporary file of a concurrent install, already renamed
                continue
            if stat.S_ISLNK(st.st_mode):
                problems.append(f"{path} is a symbolic link")
            elif name in filenames:
                problem = _owner_and_mode_problem(path, st, above=False)
                if problem:
                    problems.append(problem)
    return problems


def main(argv: List[str]) -> int:
    """Check the directory of this file, then run the engine (``JOBFILE.job``) or the origin
    seeder (``--seeds SEEDS.json``) from it; ``--check`` only checks (exit 0: safe, 3: not)."""
    root = os.path.dirname(os.path.abspath(__file__))
    problems = unsafe_paths(root)
    if problems:
        sys.stderr.write(f"refusing to run the BitTorrent engine from {root}: {'; '.join(problems)}\n")
        return 3
    if argv == ["--check"]:
        return 0
    sys.path.insert(0, root)
    if len(argv) == 2 and argv[0] == "--seeds":
        from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_seeder import (  # noqa: PLC0415
            seeder_main,
        )

        return seeder_main(argv[1])
    from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_engine import engine_main  # noqa: PLC0415

    return engine_main(argv)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
