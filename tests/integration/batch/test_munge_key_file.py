"""The batch_client and batch_controller roles write a binary munge key byte for byte (issue 14,
item 7): from a file (copy src), base64 decoded into a file on the Ansible controller first, never
as template text."""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import stat

import pytest

from tests.integration.batch.conftest import HERE, controller_vars
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


def controller_role_vars(tmp, **key):
    """The batch_controller role on localhost into ``tmp``: no packages, no services, this test's
    own slurm.conf directory and key path (never /etc/munge or the batch fixture's /run directory)."""
    os.makedirs(tmp, exist_ok=True)  # the key's directory, as /etc/munge on a real host
    values = dict(controller_vars(tmp))
    values.update(
        {
            "farm_batch_controller_conf_dir": os.path.join(tmp, "etc"),
            "farm_batch_controller_state_dir": os.path.join(tmp, "state"),
            "farm_batch_controller_log_dir": os.path.join(tmp, "log"),
            "farm_batch_controller_munge_key_path": os.path.join(tmp, "munge.key"),
            "farm_batch_controller_manage_services": False,
            "farm_batch_controller_install_packages": False,
        }
    )
    values.update(key)
    return values


@pytest.mark.parametrize("form", ["b64", "src"])
def test_controller_writes_a_binary_munge_key_byte_for_byte(hostbed, form):
    """The whole batch_controller role installs a supplied key whose bytes are not UTF-8 (0x80-0xff,
    NUL) unchanged (same sha256), mode 0400 owner munge; the base64 form leaves no decoded copy in
    the Ansible controller's temporary directory, nothing logs the key, and a rerun changes nothing."""
    root = os.path.join(hostbed.tmp, "controller-" + form)
    scratch = os.path.join(hostbed.tmp, "scratch-" + form)  # TMPDIR of the run: where the decoded key goes
    os.makedirs(scratch)
    if form == "src":
        src = os.path.join(hostbed.tmp, "site.key")
        with open(src, "wb") as handle:
            handle.write(KEY)
        key = {"farm_batch_controller_munge_key_src": src}
    else:
        key = {"farm_batch_controller_munge_key_b64_input": base64.b64encode(KEY).decode()}
    variables = controller_role_vars(root, **key)
    playbook = os.path.join(HERE, "controller.yml")
    envvars = {"TMPDIR": scratch}
    first = run_playbook(playbook, extravars=variables, inventory=LOCALHOST, envvars=envvars)
    assert first.rc == 0, first.stdout[-3000:]
    path = variables["farm_batch_controller_munge_key_path"]
    with open(path, "rb") as handle:
        written = handle.read()
    assert hashlib.sha256(written).hexdigest() == hashlib.sha256(KEY).hexdigest(), (
        f"the key on disk differs from the supplied one ({len(written)} bytes, {len(KEY)} supplied)"
    )
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o400
    assert st.st_uid == pwd.getpwnam("munge").pw_uid
    assert not [name for name in os.listdir(scratch) if name.endswith(".munge.key")], os.listdir(scratch)
    b64 = base64.b64encode(KEY).decode()
    assert b64[:40] not in first.stdout
    assert not any(b64[:40] in repr(event) for event in first.events), "the munge key leaked into a job event"
    second = run_playbook(playbook, extravars=variables, inventory=LOCALHOST, envvars=envvars)
    assert second.rc == 0 and not second.changed, second.changed_tasks()


def test_controller_bad_base64_key_fails_and_leaves_no_decoded_copy(hostbed):
    """A supplied key that is not base64 fails the play (never a silently generated or truncated
    key) and the temporary file on the Ansible controller is removed all the same."""
    root = os.path.join(hostbed.tmp, "controller-bad")
    scratch = os.path.join(hostbed.tmp, "scratch-bad")
    os.makedirs(scratch)
    variables = controller_role_vars(root, farm_batch_controller_munge_key_b64_input="not base64 at all!")
    result = run_playbook(
        os.path.join(HERE, "controller.yml"), extravars=variables, inventory=LOCALHOST, envvars={"TMPDIR": scratch}
    )
    assert result.rc != 0, result.stdout[-3000:]
    assert not os.path.exists(variables["farm_batch_controller_munge_key_path"])
    assert not [name for name in os.listdir(scratch) if name.endswith(".munge.key")], os.listdir(scratch)
