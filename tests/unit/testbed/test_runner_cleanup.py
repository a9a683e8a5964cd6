"""The testbed's ansible-runner wrapper leaves nothing behind: its private data dir holds the
extra variables (munge keys among them) in env/extravars and must not outlive the run."""

from __future__ import annotations

import os
import tempfile

from tests.testbed.ansible import run_playbook

PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Say hello
      ansible.builtin.debug:
        msg: hello
"""


def test_runner_dir_and_secret_removed_after_the_run(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    playbook = tmp_path / "hello.yml"
    playbook.write_text(PLAYBOOK)
    secret = "bvt-secret-3f1c9e"
    result = run_playbook(str(playbook), extravars={"munge_key": secret})
    assert result.rc == 0, result.stdout[-2000:]
    assert result.results("Say hello"), "the events must still be readable after the clean-up"
    assert os.listdir(scratch) == [], "ansible-runner's private data dir outlived the run"
    for root, _dirs, files in os.walk(tmp_path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                assert secret.encode() not in handle.read(), f"{name} still holds the secret"


def test_caller_owned_dir_is_kept(tmp_path):
    playbook = tmp_path / "hello.yml"
    playbook.write_text(PLAYBOOK)
    pdd = tmp_path / "pdd"
    pdd.mkdir()
    result = run_playbook(str(playbook), private_data_dir=str(pdd))
    assert result.rc == 0
    assert (pdd / "artifacts").is_dir()
