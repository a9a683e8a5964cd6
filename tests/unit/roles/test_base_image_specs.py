"""The base_image role's inputs: every default is validated by meta/argument_specs.yml with
the same default, and every option there has a default (so the docs cannot drift)."""

from __future__ import annotations

import os
import re

import pytest
import yaml

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "base_image")


def _load(rel: str) -> dict:
    with open(os.path.join(ROLE, rel), encoding="utf-8") as f:
        return yaml.safe_load(f)


DEFAULTS = _load("defaults/main.yml")
OPTIONS = _load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
# Defaults that depend on farm_base_image_family: documented in the description instead.
FAMILY_DEPENDENT = {
    "farm_base_image_release",
    "farm_base_image_mirror",
    "farm_base_image_packages",
    "farm_base_image_el_gpg_key",
}


def test_every_default_is_prefixed_and_validated():
    for name in DEFAULTS:
        assert name.startswith("farm_base_image_"), f"{name} lacks the role prefix"
        assert name in OPTIONS, f"{name} is in defaults/main.yml but not in meta/argument_specs.yml"


def test_every_option_has_a_default():
    missing = sorted(set(OPTIONS) - set(DEFAULTS))
    assert not missing, f"options without a default in defaults/main.yml: {missing}"


@pytest.mark.parametrize("name", sorted(set(DEFAULTS) - FAMILY_DEPENDENT))
def test_documented_default_matches(name):
    spec = OPTIONS[name]
    assert "default" in spec, f"{name}: meta/argument_specs.yml gives no default"
    assert spec["default"] == DEFAULTS[name], f"{name}: spec default {spec['default']!r} != {DEFAULTS[name]!r}"


@pytest.mark.parametrize("name", sorted(FAMILY_DEPENDENT))
def test_family_dependent_defaults_are_described(name):
    spec = OPTIONS[name]
    assert "default" not in spec, f"{name}: a fixed spec default would hide the per-family default"
    text = " ".join(spec["description"]) if isinstance(spec["description"], list) else spec["description"]
    assert re.search(r"debian|bookworm|almalinux|mirror", text, re.I), f"{name}: describe the per-family default"


def test_base_content_holds_what_workers_need():
    packages = _load("vars/main.yml")["__farm_base_image_family_defaults"]["debian"]["packages"]
    for pkg in ("systemd-sysv", "linux-image-cloud-amd64", "openssh-server", "python3", "python3-apt",
                "python3-cffi-backend", "cloud-init", "iproute2"):  # fmt: skip
        assert pkg in packages, f"{pkg} missing from the Debian base content"
    # debootstrap does not resolve virtual alternatives: systemd-resolved needs dbus listed.
    if "systemd-resolved" in packages:
        assert "dbus" in packages
