"""The image_cache role's swarm shares (roles/image_cache/vars/main.yml), rendered by Ansible's own
templar: every host of a batch gets its own index, a lone host or a host outside the batch none."""

from __future__ import annotations

import os

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

VARS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "image_cache", "vars", "main.yml")


def _share(host, batch, enabled=True):
    with open(VARS, encoding="utf-8") as f:
        expression = yaml.safe_load(f)["__farm_image_cache_share"]
    try:
        from ansible.template import trust_as_template  # ansible-core >= 2.19: only trusted text is rendered
    except ImportError:  # older ansible-core renders any string

        def trust_as_template(text):
            return text

    variables = {"inventory_hostname": host, "ansible_play_batch": batch, "farm_image_cache_swarm_shares": enabled}
    return Templar(loader=DataLoader(), variables=variables).template(trust_as_template(expression))


def test_every_host_of_a_batch_gets_its_own_share():
    batch = [f"hv{i:02d}" for i in range(16)]
    shares = [_share(host, batch) for host in batch]
    assert shares == [{"swarm_index": i, "swarm_size": 16} for i in range(16)]


@pytest.mark.parametrize(
    "host, batch, enabled",
    [("hv01", ["hv01"], True), ("hv09", ["hv01", "hv02"], True), ("hv01", ["hv01", "hv02"], False)],
)
def test_no_share_alone_outside_the_batch_or_when_off(host, batch, enabled):
    assert _share(host, batch, enabled) == {}
