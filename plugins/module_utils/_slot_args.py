# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument spec of the ``batchvirt.farm.slot`` module (its options are documented in the
module and, for ``slots`` and ``layout``, in the ``batchvirt.farm.slot_layout`` doc fragment)."""

from __future__ import annotations

from typing import Any, Dict

_ADDRESS_POOL: Dict[str, Any] = {
    "network": {"type": "str", "required": True},
    "first": {"type": "str"},
    "last": {"type": "str"},
    "ranges": {"type": "list", "elements": "str"},
    "exclude": {"type": "list", "elements": "str"},
    "gateway": {"type": "str"},
    "dns": {"type": "list", "elements": "str"},
}
ARGUMENT_SPEC: Dict[str, Any] = {
    "name": {"type": "str"},
    "slots": {
        "type": "list",
        "elements": "dict",
        "options": {
            "name": {"type": "str", "required": True},
            "vcpus": {"type": "int"},
            "memory_mib": {"type": "int"},
            "disk_size_gib": {"type": "int"},
            "network": {"type": "dict"},
            "worker_type": {"type": "str"},
            "batch_node": {"type": "str"},
            "cloud_init": {"type": "dict", "no_log": True},
        },
    },
    "layout": {
        "type": "dict",
        "options": {
            "count": {"type": "str", "default": "auto"},
            "index": {"type": "int", "default": 0},
            "stride": {"type": "int", "default": 32},
            "block_record": {"type": "path", "default": "/etc/batchvirt/slot-block.json"},
            "address_pool": {"type": "dict", "options": _ADDRESS_POOL},
            "ssh_port_base": {"type": "int"},
            "reserved_memory_mib": {"type": "int"},
            "reserved_cpus": {"type": "int"},
            "qemu_overhead_mib": {"type": "int"},
            "overcommit_cpu": {"type": "float", "default": 1.0},
            "mix": {
                "type": "list",
                "elements": "dict",
                "options": {
                    "worker_type": {"type": "str", "required": True},
                    "count": {"type": "str", "default": "auto"},
                    "vcpus": {"type": "int"},
                    "memory_mib": {"type": "int"},
                    "disk_size_gib": {"type": "int"},
                    "image": {"type": "dict"},
                    "features": {"type": "list", "elements": "str"},
                },
            },
        },
    },
    "state": {
        "type": "str",
        "choices": ["present", "running", "draining", "absent", "resolved"],
        "default": "running",
    },
    "hypervisor": {"type": "str"},
    "image": {
        "type": "dict",
        "options": {
            "identifier": {"type": "str"},
            "version": {"type": "str"},
            "path": {"type": "path"},
            "format": {"type": "str", "choices": ["qcow2", "raw"]},
            "sha512": {"type": "str"},
            "cache_root": {"type": "path", "default": "/var/lib/batchvirt/images"},
            "avoid": {"type": "list", "elements": "str"},
        },
    },
    "vcpus": {"type": "int", "default": 1},
    "memory_mib": {"type": "int", "default": 2048},
    "disk_size_gib": {"type": "int"},
    "domain_type": {"type": "str", "choices": ["kvm", "qemu"]},
    "boot": {
        "type": "dict",
        "options": {
            "mode": {"type": "str", "choices": ["bootloader", "kernel"], "default": "bootloader"},
            "kernel": {"type": "path"},
            "initrd": {"type": "path"},
            "cmdline": {"type": "str"},
            "description": {"type": "path"},
        },
    },
    "network": {
        "type": "dict",
        "options": {
            "mode": {"type": "str", "choices": ["user", "bridge", "network"], "default": "user"},
            "bridge": {"type": "str"},
            "network": {"type": "str"},
            "address": {"type": "str"},
            "gateway": {"type": "str"},
            "dns": {"type": "list", "elements": "str"},
            "mac": {"type": "str"},
            "ssh_host": {"type": "str", "default": "127.0.0.1"},
            "ssh_port": {"type": "int"},
            "ssh_user": {"type": "str", "default": "root"},
            "forwards": {"type": "list", "elements": "str"},
        },
    },
    "cloud_init": {"type": "dict", "no_log": True},
    "ssh_authorized_keys": {"type": "list", "elements": "str", "no_log": False},
    "lifetime": {"type": "int", "default": 604800},
    "lifetime_spread": {"type": "int", "default": 0},
    "max_job_walltime": {"type": "int", "default": 172800},
    "worker_type": {"type": "str"},
    "purpose": {"type": "str", "choices": ["worker", "golden"], "default": "worker"},
    "batch": {
        "type": "dict",
        "options": {
            "system": {"type": "str", "choices": ["slurm", "htcondor"], "default": "slurm"},
            "node_name": {"type": "str"},
            "controller": {"type": "str"},
            "munge_key": {"type": "str", "no_log": True},
            "features": {"type": "list", "elements": "str"},
            "slurm_conf": {"type": "str"},
            "dynamic": {"type": "bool", "default": True},
            "controller_port": {"type": "int", "default": 6817},
        },
    },
    "drain_reason": {"type": "str"},
    "force": {"type": "bool", "default": False},
    "shutdown_timeout": {"type": "int", "default": 60},
    "machine_features": {
        "type": "dict",
        "options": {
            "enabled": {"type": "bool", "default": True},
            "path": {"type": "str", "default": "/etc/machinefeatures"},
            "hs06": {"type": "float"},
            "jobslots": {"type": "int"},
            "grace_secs": {"type": "int", "default": 60},
            "job_features": {"type": "bool", "default": True},
        },
    },
    "end_reason": {"type": "int", "choices": [100, 200, 300, 400, 500, 600]},
    "start_concurrency": {"type": "int", "default": 4},
    "pool": {"type": "str", "default": "batchvirt-slots"},
    "overlay": {
        "type": "dict",
        "options": {
            "type": {"type": "str", "choices": ["qcow2", "lvm"], "default": "qcow2"},
            "volume_group": {"type": "str"},
            "origin": {"type": "str"},
        },
    },
}
