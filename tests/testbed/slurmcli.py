"""Slurm's command-line tools against one private ``slurm.conf`` (each test bed has its own
controller, so no test touches the machine's ``/etc/slurm``)."""

from __future__ import annotations

import os
import subprocess
from typing import Dict, Type


def env(conf: str) -> Dict[str, str]:
    """This process's environment with ``SLURM_CONF`` pointing at ``conf``."""
    return dict(os.environ, SLURM_CONF=conf)


def run(
    conf: str,
    *argv: str,
    check: bool = True,
    timeout: float = 60,
    error: Type[Exception] = AssertionError,
) -> str:
    """``argv`` (``sinfo``, ``scontrol``...) with ``SLURM_CONF=conf``: its standard output, or
    ``error`` naming the command and what it printed when ``check`` and it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env(conf))
    if check and proc.returncode != 0:
        raise error(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout
