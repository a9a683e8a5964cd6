"""cloud_init_registration: the user-data entries that make a VM register itself at boot."""

from __future__ import annotations

import base64
import shlex

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
    BatchError,
    cloud_init_registration,
    slurmd_options,
)

KEY = bytes(range(256))[:128]


def files(data):
    return {f["path"]: f for f in data["write_files"]}


def test_slurm_dynamic_node_with_slurm_conf():
    data = cloud_init_registration(
        "slurm", "slot-hv01-03", "10.0.2.2", KEY, features=["worker-el9"], slurm_conf="ClusterName=farm\n"
    )
    f = files(data)
    key = f["/etc/munge/munge.key"]
    assert key["encoding"] == "b64" and base64.b64decode(key["content"]) == KEY
    assert key["owner"] == "munge:munge" and key["permissions"] == "0400"
    assert f["/etc/slurm/slurm.conf"]["content"] == "ClusterName=farm\n"
    default = f["/etc/default/slurmd"]["content"]
    line = [x for x in default.splitlines() if x.startswith("SLURMD_OPTIONS=")][0]
    assert shlex.split(line.split("=", 1)[1]) == ["-N slot-hv01-03 -Z --conf=Feature=worker-el9"]
    assert data["runcmd"][-1][0:2] == ["sh", "-c"]
    assert "for unit in munge slurmd" in data["runcmd"][-1][2]
    assert "service slurmd restart" in data["runcmd"][-1][2]


def test_slurm_configless_pre_declared_node_and_base64_key():
    data = cloud_init_registration(
        "slurm", "vm1", "localhost", base64.b64encode(KEY).decode(), dynamic=False, controller_port=26817
    )
    f = files(data)
    assert "/etc/slurm/slurm.conf" not in f
    assert "SLURMD_OPTIONS='-N vm1 --conf-server=localhost:26817'" in f["/etc/default/slurmd"]["content"]
    assert base64.b64decode(f["/etc/munge/munge.key"]["content"]) == KEY


def test_slurmd_options_refuse_blanks():
    assert slurmd_options("n1", ["a", "b"]) == "-N n1 -Z --conf=Feature=a,b"
    with pytest.raises(BatchError, match="must not contain blanks"):
        slurmd_options("n1", ["two words"])


def test_htcondor_execute_node():
    data = cloud_init_registration("htcondor", "slot-hv01-03", "cm.example.org", features=["worker-el9"])
    conf = files(data)["/etc/condor/config.d/50-farm.conf"]["content"]
    assert "CONDOR_HOST = cm.example.org" in conf
    assert 'FARM_NODE_NAME = "slot-hv01-03"' in conf
    assert "STARTD_ATTRS = $(STARTD_ATTRS) FARM_NODE_NAME FARM_FEATURES" in conf


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"system": "slurm", "node_name": "", "controller": "c", "munge_key": KEY}, "node_name is empty"),
        ({"system": "slurm", "node_name": "n", "controller": "", "munge_key": KEY}, "controller is empty"),
        ({"system": "slurm", "node_name": "n", "controller": "c"}, "munge_key is required"),
        ({"system": "slurm", "node_name": "n", "controller": "c", "munge_key": "not base64!"}, "must be base64"),
        ({"system": "slurm", "node_name": "n", "controller": "c", "munge_key": "c2hvcnQ="}, "at least 32"),
        ({"system": "pbs", "node_name": "n", "controller": "c"}, "system='pbs' is not supported"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(BatchError, match=message):
        cloud_init_registration(**kwargs)


WRITTEN_AT = 1_800_000_000  # when cloud-init wrote the key and configuration files (epoch)


@pytest.mark.parametrize(
    ("enabled", "running", "calls_wanted"),
    [
        # the usual image: both enabled, both started after cloud-init wrote their files: nothing
        # to do (no reload of systemd, no second registration of a node that may have a job)
        ({"munge", "slurmd"}, {"munge": 100, "slurmd": 100}, []),
        # slurmd started before its configuration was written: restarted, munge left alone
        ({"munge", "slurmd"}, {"munge": 100, "slurmd": -100}, ["restart slurmd"]),
        # started in the same second as the newest file: restarted (it may have read the old one)
        ({"munge", "slurmd"}, {"munge": 0, "slurmd": 100}, ["restart munge"]),
        # slurmd not running (it failed without a configuration): started
        ({"munge", "slurmd"}, {"munge": 100}, ["restart slurmd"]),
        # an image that enables neither: one `systemctl enable` for both, both started
        (set(), {}, ["enable munge slurmd", "restart munge", "restart slurmd"]),
        ({"munge"}, {"munge": 100}, ["enable slurmd", "restart slurmd"]),
    ],
)
def test_the_registration_script_enables_and_restarts_only_what_needs_it(tmp_path, enabled, running, calls_wanted):
    """The runcmd entry, run by a real shell against a recording `systemctl` and files whose
    modification time is cloud-init's write."""
    import os
    import subprocess
    import time

    data = cloud_init_registration("slurm", "vm1", "10.0.2.2", KEY, slurm_conf="ClusterName=farm\n")
    script = data["runcmd"][-1][2]
    systemd_dir = tmp_path / "run-systemd-system"
    systemd_dir.mkdir()
    script = script.replace("/run/systemd/system", str(systemd_dir))
    for n, entry in enumerate(data["write_files"]):  # the files, as cloud-init left them
        local = tmp_path / f"file{n}"
        local.write_text("x")
        os.utime(local, (WRITTEN_AT, WRITTEN_AT))
        assert entry["path"] in script
        script = script.replace(entry["path"], str(local))
    (tmp_path / "enabled").write_text("".join(f"{u}\n" for u in enabled))
    (tmp_path / "active").write_text("".join(f"{u}\n" for u in running))
    stamp = "%a %Y-%m-%d %H:%M:%S UTC"
    (tmp_path / "since").write_text(
        "".join(f"{u} {time.strftime(stamp, time.gmtime(WRITTEN_AT + d))}\n" for u, d in running.items())
    )
    log = tmp_path / "calls"
    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f"cd {tmp_path}\n"
        'case "$1" in\n'
        '  is-enabled) grep -qx "$3" enabled ;;\n'
        '  is-active) grep -qx "$3" active ;;\n'
        '  show) grep "^$5 " since | cut -d" " -f2- ;;\n'
        '  *) echo "$*" >> calls ;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", TZ="UTC")
    run = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    assert calls == calls_wanted
