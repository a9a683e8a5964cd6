"""Host capability parsing: the default domain type must be kvm only where KVM can work."""

from __future__ import annotations

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._module import merge_specs

CAPS = """<capabilities>
  <host><cpu><arch>x86_64</arch>{features}</cpu></host>
  <guest><os_type>hvm</os_type>
    <arch name='x86_64'>{domains}</arch>
  </guest>
  <guest><os_type>hvm</os_type>
    <arch name='i686'><domain type='qemu'/><domain type='kvm'/></arch>
  </guest>
</capabilities>"""


def caps(features=(), domains=("qemu", "kvm")):
    return CAPS.format(
        features="".join("<feature policy='require' name='%s'/>" % f for f in features),
        domains="".join("<domain type='%s'/>" % d for d in domains),
    )


@pytest.mark.parametrize(
    ("features", "domains", "expected"),
    [
        (("vmx", "pdpe1gb"), ("qemu", "kvm"), "kvm"),
        (("svm",), ("qemu", "kvm"), "kvm"),
        # /dev/kvm exists on a nested host without vmx/svm: KVM is listed but guests do not boot.
        (("pdpe1gb",), ("qemu", "kvm"), "qemu"),
        (("vmx",), ("qemu",), "qemu"),
        ((), (), "qemu"),
    ],
)
def test_default_domain_type(features, domains, expected):
    assert _libvirt.default_domain_type(caps(features, domains)) == expected


def test_domain_types_are_per_arch():
    assert _libvirt.host_domain_types(caps(domains=("qemu",)), "x86_64") == ["qemu"]
    assert _libvirt.host_domain_types(caps(domains=("qemu",)), "i686") == ["qemu", "kvm"]


def test_merge_specs_deep_copies_and_module_spec_wins():
    common = {"uri": {"type": "str", "default": "qemu:///system"}, "timeout": {"type": "int", "default": 5}}
    merged = merge_specs({"timeout": {"type": "int", "default": 30}}, common)
    assert merged["timeout"]["default"] == 30
    merged["uri"]["default"] = "changed"
    assert common["uri"]["default"] == "qemu:///system"


def test_connect_failure_says_what_to_check():
    if not _libvirt.HAS_LIBVIRT:
        pytest.skip("libvirt-python not installed")
    with pytest.raises(
        _libvirt.FarmLibvirtError, match=r"cannot connect to libvirt at qemu\+tcp://127.0.0.1:1/system.*libvirtd"
    ):
        _libvirt.connect("qemu+tcp://127.0.0.1:1/system")
