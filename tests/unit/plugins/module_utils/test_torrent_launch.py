"""Where the BitTorrent engine runs from: a root-owned directory nobody else can write, checked
before any of its code is imported; never the (writable) state directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs, _torrent_launch
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta import TorrentError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
MODULE_UTILS = os.path.join(*_torrent_jobs.ENGINE_PACKAGE)


@pytest.fixture
def engine_dir(tmp_path):
    safe = tmp_path / "safe"
    safe.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    return str(safe / "engine")


def _launch(launcher: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-B", launcher, *args], capture_output=True, text=True, check=False)


def test_installed_engine_runs_alone_from_its_directory(engine_dir):
    launcher = _torrent_jobs.install_engine(engine_dir)
    assert launcher == os.path.join(engine_dir, "launch.py")
    assert _launch(launcher, "--check").returncode == 0
    # the engine and the origin seeder import nothing but their installed files (python -I)
    usage = _launch(launcher)
    assert usage.returncode == 2 and "usage: launch.py JOBFILE.job" in usage.stderr, usage.stderr
    seeder = _launch(launcher, "--seeds", os.path.join(engine_dir, "missing.json"))
    assert "cannot read the seeds file" in seeder.stderr, seeder.stderr
    for name in os.listdir(os.path.join(engine_dir, MODULE_UTILS)):
        path = os.path.join(engine_dir, MODULE_UTILS, name)
        assert os.stat(path).st_mode & 0o022 == 0, path
    # a second install changes nothing
    before = {p: os.stat(os.path.join(engine_dir, p)).st_mtime_ns for p in _torrent_jobs.engine_files()}
    _torrent_jobs.install_engine(engine_dir)
    assert before == {p: os.stat(os.path.join(engine_dir, p)).st_mtime_ns for p in _torrent_jobs.engine_files()}


@pytest.mark.parametrize("where", ["file", "directory", "above"])
def test_a_writable_engine_location_is_refused_by_name(engine_dir, where):
    _torrent_jobs.install_engine(engine_dir)
    target = {
        "file": os.path.join(engine_dir, MODULE_UTILS, "_torrent_engine.py"),
        "directory": os.path.join(engine_dir, MODULE_UTILS),
        "above": os.path.dirname(engine_dir),
    }[where]
    os.chmod(target, os.stat(target).st_mode | 0o022)
    with pytest.raises(TorrentError) as err:
        _torrent_jobs.install_engine(engine_dir)
    assert err.value.option == "engine_dir"
    assert f"{target} is writable by its group or by others" in err.value.message
    assert f"refusing to run the BitTorrent engine from {engine_dir}" in err.value.message


def test_an_engine_file_of_another_user_is_refused(engine_dir):
    _torrent_jobs.install_engine(engine_dir)
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    target = os.path.join(engine_dir, MODULE_UTILS, "_torrent_seeder.py")
    os.chown(target, 65534, 65534)
    assert _torrent_launch.unsafe_paths(engine_dir) == [f"{target} belongs to uid 65534, not to root"]


def test_the_launcher_imports_nothing_from_a_writable_directory(engine_dir, tmp_path):
    """Planted code in a group-writable engine directory is never run: the launcher refuses first."""
    launcher = _torrent_jobs.install_engine(engine_dir)
    marker = tmp_path / "planted-code-ran"
    planted = os.path.join(engine_dir, MODULE_UTILS, "_torrent_engine.py")
    with open(planted, "w") as handle:
        handle.write(f"open({str(marker)!r}, 'w').close()\n")
    os.chmod(planted, 0o666)
    result = _launch(launcher, os.path.join(str(tmp_path), "x.job"))
    assert result.returncode == 3
    assert f"refusing to run the BitTorrent engine from {engine_dir}: {planted} is writable" in result.stderr
    assert not marker.exists(), "the launcher imported code from a writable file"
    os.chmod(planted, 0o644)  # the same file, safe: now it runs (the check is what stopped it)
    _launch(launcher, os.path.join(str(tmp_path), "x.job"))
    assert marker.exists()


def test_a_symbolic_link_in_the_engine_is_refused(engine_dir, tmp_path):
    _torrent_jobs.install_engine(engine_dir)
    link = os.path.join(engine_dir, MODULE_UTILS, "extra.py")
    os.symlink(str(tmp_path / "elsewhere.py"), link)
    assert _torrent_launch.unsafe_paths(engine_dir) == [f"{link} is a symbolic link"]


def test_a_missing_engine_directory_is_reported():
    assert _torrent_launch.unsafe_paths("/nonexistent/engine")[0].startswith("/nonexistent/engine does not exist")


def test_the_roles_install_the_same_files():
    with open(os.path.join(ROOT, "roles", "image_seeder", "vars", "main.yml")) as handle:
        role_vars = yaml.safe_load(handle)
    names = [module.__name__.rsplit(".", 1)[-1] for module in _torrent_jobs.ENGINE_FILES]
    assert role_vars["__farm_image_seeder_engine_files"] == names
    assert role_vars["__farm_image_seeder_engine_package"] == "/".join(_torrent_jobs.ENGINE_PACKAGE)
    dirs = ["/".join(_torrent_jobs.ENGINE_PACKAGE[:depth]) for depth in range(1, len(_torrent_jobs.ENGINE_PACKAGE) + 1)]
    assert role_vars["__farm_image_seeder_engine_dirs"] == [".", *dirs]
