"""The base_image role without a full build: bad input, a failed build, and the recipe
check that decides whether to build (the full build and boot run in extensions/molecule/default)."""

from __future__ import annotations

import json
import os

import pytest

from tests.testbed.ansible import LOCALHOST, run_playbook

PLAYBOOK = os.path.join(os.path.dirname(__file__), "base_image.yml")
# Nothing listens on the discard port: debootstrap fails within a second.
DEAD_MIRROR = "http://127.0.0.1:9/debian"


def _vars(tmp: str, **extra) -> dict:
    base = {
        "farm_base_image_dir": tmp,
        "farm_base_image_name": "bvt-test",
        "farm_base_image_mirror": DEAD_MIRROR,
        "farm_base_image_install_build_deps": False,
    }
    base.update(extra)
    return base


def _failure_messages(result) -> str:
    msgs = []
    for e in result.events:
        if e.get("event") in ("runner_on_failed", "runner_item_on_failed"):
            res = e["event_data"].get("res", {})
            msgs.append(str(res.get("msg", "")) + str(res.get("stderr", "")))
    return "\n".join(msgs)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"farm_base_image_family": "suse"}, "farm_base_image_family must be one of: debian, el"),
        ({"farm_base_image_disk_size_mb": 100}, "farm_base_image_disk_size_mb is 100; give at least 512"),
        ({"farm_base_image_boot_modes": []}, "farm_base_image_boot_modes is empty"),
        ({"farm_base_image_boot_modes": ["uefi"]}, "farm_base_image_boot_modes"),
        ({"farm_base_image_name": "../evil"}, "farm_base_image_name '../evil' may hold only"),
        ({"farm_base_image_dir": "relative/dir"}, "farm_base_image_dir 'relative/dir' must be an absolute path"),
    ],
)
def test_bad_input_fails_early_naming_the_variable(tmp_path, extra, message):
    result = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=_vars(str(tmp_path), **extra))
    assert result.failed
    assert message in _failure_messages(result), _failure_messages(result)
    assert not list(tmp_path.iterdir()), "nothing may be written before the input is validated"


def test_failed_build_leaves_no_description(tmp_path):
    result = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=_vars(str(tmp_path)))
    assert result.failed
    assert "debootstrap failed" in _failure_messages(result), _failure_messages(result)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith((".json", ".qcow2"))], names
    assert ".build-bvt-test" not in names, "the build directory must be removed after a failure"


def _recipe(tmp: str, **extra) -> dict:
    result = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=_vars(tmp, bvt_recipe_only=True, **extra))
    assert result.rc == 0, result.stdout[-3000:]
    return result.results("Report the recipe")[0]["msg"]


def test_recipe_is_stable_and_follows_every_input(tmp_path):
    tmp = str(tmp_path)
    first = _recipe(tmp)
    assert first == _recipe(tmp), "the same inputs must give the same recipe"
    assert first["version"] == "bookworm." + first["recipe_sha256"][:12]
    assert first["paths"]["disk"] == os.path.join(tmp, "bvt-test-" + first["version"] + ".qcow2")
    for extra in (
        {"farm_base_image_extra_packages": ["slurmd"]},
        {"farm_base_image_cloud_init_datasources": ["ConfigDrive", "None"]},
        {"farm_base_image_boot_modes": ["kernel"]},
        {"farm_base_image_mirror": "http://127.0.0.1:9/other"},
    ):
        assert _recipe(tmp, **extra)["recipe_sha256"] != first["recipe_sha256"], extra
    # The output directory is not part of the recipe.
    assert _recipe(tmp + "/elsewhere")["recipe_sha256"] == first["recipe_sha256"]


def test_same_recipe_is_not_rebuilt_and_a_changed_one_is(tmp_path):
    tmp = str(tmp_path)
    recipe = _recipe(tmp)
    paths = recipe["paths"]
    # A published image from this recipe (its content does not matter to the check).
    description = {
        "identifier": "bvt-test",
        "version": recipe["version"],
        "format": "qcow2",
        "file": paths["disk"],
        "size": 0,
        "sha512": "0" * 128,
        "boot": {"modes": ["kernel", "bootloader"], "kernel": paths["kernel"], "initrd": paths["initrd"]},
        "recipe_sha256": recipe["recipe_sha256"],
        "created": "2026-01-01T00:00:00Z",
    }
    with open(paths["description"], "w", encoding="utf-8") as f:
        json.dump(description, f)
    os.symlink(os.path.basename(paths["description"]), paths["latest"])

    result = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=_vars(tmp))
    assert result.rc == 0, result.stdout[-3000:]
    assert not result.changed, f"unchanged recipe must not change anything: {result.changed_tasks()}"
    assert result.results("Report the image description")[0]["farm_base_image"] == description

    # A changed recipe builds (and fails on the dead mirror, which proves it tried).
    result = run_playbook(PLAYBOOK, inventory=LOCALHOST, extravars=_vars(tmp, farm_base_image_extra_packages=["munge"]))
    assert result.failed
    assert "debootstrap failed" in _failure_messages(result), _failure_messages(result)
    with open(paths["latest"], encoding="utf-8") as f:
        assert json.load(f) == description, "a failed build must leave the latest image in place"
