"""The batch_client role writes a binary munge key byte for byte (issue 14, item 7): from a file
(copy src), base64 decoded into a file on the controller first, never as template text."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from tests.integration.batch.conftest import HERE
from tests.testbed.ansible import LOCALHOST, run_playbook

# bytes that are not UTF-8 (0xff, 0xfe, lone continuation bytes, NUL): text templating mangles them
KEY = bytes(range(256)) * 4


def role_vars(root, **key):
    values = {
        "farm_batch_client_munge_key_path": os.path.join(root, "munge.key"),
        "farm_batch_client_conf_dir": os.path.join(root, "etc"),
        "farm_batch_client_defaults_file": os.path.join(root, "default-slurmd"),
        "farm_batch_client_spool_dir": os.path.join(root, "spool"),
        "farm_batch_client_log_dir": os.path.join(root, "log"),
        "farm_batch_client_start": False,
        "farm_batch_client_enable": False,
        "farm_batch_client_install_packages": False,
    }
    values.update(key)
    return values


@pytest.mark.parametrize("form", ["b64", "src"])
def test_binary_munge_key_reaches_disk_byte_for_byte(testbed, form):
    root = os.path.join(testbed.tmp, form)
    if form == "src":
        src = os.path.join(testbed.tmp, "cluster.key")
        with open(src, "wb") as handle:
            handle.write(KEY)
        key = {"farm_batch_client_munge_key_src": src}
    else:
        key = {"farm_batch_client_munge_key_b64": base64.b64encode(KEY).decode()}
    variables = role_vars(root, **key)
    playbook = os.path.join(HERE, "client.yml")
    first = run_playbook(playbook, extravars=variables, inventory=LOCALHOST)
    assert first.rc == 0, first.stdout[-3000:]
    assert base64.b64encode(KEY).decode()[:40] not in first.stdout
    path = variables["farm_batch_client_munge_key_path"]
    with open(path, "rb") as handle:
        assert handle.read() == KEY
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    second = run_playbook(playbook, extravars=variables, inventory=LOCALHOST)
    assert second.rc == 0 and not second.changed, second.changed_tasks()
