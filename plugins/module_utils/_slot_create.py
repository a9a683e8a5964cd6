# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: creating slots from their plans, and starting them.

A new slot is an overlay (qcow2 volume backed by the staged image, or an LVM snapshot), a
seed ISO volume and a domain definition; a creation that fails half-way is rolled back (no
orphan overlay, seed ISO or domain). Starts are queued and run ``start_concurrency`` at a
time at the end of the call; a slot that fails to start is rolled back and reported, the
others are kept and reported too.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils import _seed
from ansible_collections.batchvirt.farm.plugins.module_utils._hypervisor import HypervisorError, lvm_snapshot_command
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import libvirt
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_domain import (
    domain_xml,
    lvm_remove_commands,
    overlay_volume_xml,
    raw_volume_xml,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError, SlotHost, SlotResult
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata
from ansible_collections.batchvirt.farm.plugins.module_utils._slot_plan import SlotPlan

MIB = 1024**2
Created = List[Tuple[str, Any]]  # what a creation made so far, for its rollback: (kind, object)


def describe(host: SlotHost, plan: SlotPlan, meta: SlotMetadata, running: bool) -> Dict[str, Any]:
    """A slot's entry in the results."""
    return {
        "name": plan.name,
        "uuid": plan.spec.uuid,
        "mac": plan.spec.mac,
        "domain_type": plan.spec.domain_type,
        "running": running,
        "lifecycle": meta.lifecycle(host.now, running),
        "metadata": meta.to_dict(),
        "addresses": [meta.address] if meta.address else [],
        "ssh": {"host": meta.ssh_host, "port": meta.ssh_port, "user": meta.ssh_user},
        "overlay": plan.spec.overlay_path,
        "seed": plan.spec.seed_path,
        "image_outdated": (meta.image_identifier, meta.image_version) != (plan.image.identifier, plan.image.version),
    }


def seed_files(plan: SlotPlan, meta: SlotMetadata) -> Dict[str, str]:
    """user-data, meta-data and (static address or DHCP by MAC) network-config of the seed ISO."""
    registration = None
    batch = plan.batch
    mjf = plan.seed.machine_features
    if batch.controller:
        from ansible_collections.batchvirt.farm.plugins.module_utils._batch import (
            BatchError,
            cloud_init_registration,
        )

        slurm_conf = batch.slurm_conf
        job_features = None
        if mjf is not None and mjf.get("job_features", True) is not False:
            from ansible_collections.batchvirt.farm.plugins.module_utils import _mjf

            if batch.system == "slurm":
                # $JOBFEATURES: the scripts, and a TaskProlog in the slurm.conf the VM gets; a
                # configless VM takes the controller's slurm.conf, which names them when the site
                # configures it (docs/slots.md)
                if slurm_conf is not None:
                    slurm_conf = _mjf.slurm_conf_with_job_features(slurm_conf)
                job_features = _mjf.cloud_init_job_features()

        try:
            registration = cloud_init_registration(
                system=batch.system,
                node_name=batch.node,
                controller=batch.controller,
                munge_key=batch.munge_key,
                features=batch.features,
                slurm_conf=slurm_conf,
                dynamic=batch.dynamic,
                controller_port=batch.controller_port,
            )
        except BatchError as exc:
            raise SlotError(f"batch: {exc}", "batch") from None
        # the job features directory exists before slurmd is restarted (their runcmd first)
        registration = _seed.merge_user_data(job_features, registration)
    if mjf is not None:
        from ansible_collections.batchvirt.farm.plugins.module_utils import _mjf

        try:
            features = _mjf.machine_features(
                meta.deadline,
                plan.spec.vcpus,
                grace_secs=mjf["grace_secs"] if mjf.get("grace_secs") is not None else _mjf.DEFAULT_GRACE_SECS,
                hs06=mjf.get("hs06"),
                jobslots=mjf.get("jobslots"),
            )
            published = _mjf.cloud_init_machine_features(features, mjf.get("path") or _mjf.DEFAULT_PATH)
        except _mjf.MachineFeaturesError as exc:
            raise SlotError(str(exc), exc.option) from None
        registration = _seed.merge_user_data(registration, published)
    instance_id = "%s-%s" % (plan.name, meta.created_at.strftime("%Y%m%dT%H%M%SZ"))
    files = {
        "user-data": _seed.user_data(
            plan.seed.cloud_init, list(plan.seed.ssh_authorized_keys), registration, hostname=plan.name
        ),
        "meta-data": _seed.meta_data(instance_id, plan.name),
    }
    config = _seed.network_config(
        meta.mac, meta.address, plan.seed.gateway, list(plan.seed.dns), dhcp=meta.network_mode != "user"
    )
    if config:
        files["network-config"] = config
    return files


class SlotCreator:
    """Creates slots on one host and starts them (queued, in parallel, at the end)."""

    def __init__(self, host: SlotHost, start_concurrency: int = 4) -> None:
        self.host = host
        self.start_concurrency = start_concurrency
        self._pending: List[Tuple[SlotPlan, Any, Optional[Created]]] = []

    # -- a new slot -------------------------------------------------------------------
    def create(self, plan: SlotPlan, state: str) -> SlotResult:
        host = self.host
        name = plan.name
        result = SlotResult(name, changed=True)
        meta = plan.metadata_at(host.now)
        plan.spec.metadata = meta
        desired = domain_xml(plan.spec)
        result.actions = ["create overlay", "create seed ISO", "define"] + (["start"] if state == "running" else [])
        if host.diff_mode:
            result.diff = {
                "before_header": f"{name} (absent)",
                "after_header": f"{name} (domain XML)",
                "before": "",
                "after": desired,
            }
        stale = self._stale_volumes(plan)
        if stale:
            # left by an incarnation whose domain is gone: a replacement starts from a fresh overlay
            result.actions.insert(0, "remove stale " + " and ".join(os.path.basename(p) for p in stale))
        if not host.check_mode:
            for path in stale:
                host.delete_volume(plan.pool, path)
            dom, created = self._make(plan, meta, desired)
            if state == "running":
                self._pending.append((plan, dom, created))
            host.domains[name] = dom
        result.result = describe(host, plan, meta, state == "running")
        return result

    def _stale_volumes(self, plan: SlotPlan) -> List[str]:
        paths = [plan.spec.seed_path] if plan.overlay.is_lvm else [plan.spec.overlay_path, plan.spec.seed_path]
        if self.host.local:
            return [p for p in paths if os.path.exists(p)]
        self.host.refresh(plan.pool)
        return [p for p in paths if self.host.volume(plan.pool, os.path.basename(p)) is not None]

    def _make(self, plan: SlotPlan, meta: SlotMetadata, desired: str) -> Tuple[Any, Created]:
        """Overlay, seed ISO and definition; on failure undo what was made and raise."""
        created: Created = []
        step = "overlay"
        try:
            self.create_overlay(plan)
            created.append(("overlay", None))
            step = "seed ISO"
            created.append(("seed", self.create_seed(plan, meta)))
            step = "define"
            dom = self.host.conn.defineXML(desired)
            created.append(("domain", dom))
        except (libvirt.libvirtError, OSError, SlotError, _seed.SeedError) as exc:
            self.rollback(plan, created)
            message = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            raise SlotError(
                f"slot {plan.name}: {step} failed: {message}; nothing of this slot was left behind", "name"
            ) from None
        return dom, created

    def create_overlay(self, plan: SlotPlan) -> Any:
        if plan.overlay.is_lvm:
            try:
                argv = lvm_snapshot_command(
                    plan.overlay.volume_group, plan.overlay.origin, plan.name, max(1, plan.size // MIB)
                )
            except HypervisorError as exc:
                raise SlotError(f"overlay.{exc.option}: {exc}", "overlay") from None
            self.host.run(argv)
            return None
        xml = overlay_volume_xml(
            os.path.basename(plan.spec.overlay_path), plan.size, plan.image.path, plan.image.format
        )
        return plan.pool.createXML(xml, 0)

    def create_seed(self, plan: SlotPlan, meta: SlotMetadata) -> Any:
        """The seed ISO volume, readable by root only (user-data may carry the munge key)."""
        data = _seed.build_iso(seed_files(plan, meta))
        vol = plan.pool.createXML(raw_volume_xml(os.path.basename(plan.spec.seed_path), len(data), mode="0600"), 0)
        try:
            if self.host.local:
                with open(vol.path(), "r+b") as handle:
                    handle.write(data)
                os.chmod(vol.path(), 0o600)
            else:  # the file is on the hypervisor: send it through libvirt
                stream = self.host.conn.newStream(0)
                vol.upload(stream, 0, len(data), 0)
                stream.send(data)
                stream.finish()
        except (OSError, libvirt.libvirtError):
            vol.delete(0)
            raise
        return vol

    def rollback(self, plan: SlotPlan, created: Created) -> None:
        for kind, obj in reversed(created):
            try:
                if kind == "domain":
                    if obj.isActive():
                        obj.destroy()
                    obj.undefine()
                elif kind == "seed":
                    obj.delete(0)
                elif kind == "overlay":
                    self.delete_overlay(plan)
            except (libvirt.libvirtError, OSError, SlotError) as exc:
                self.host.warnings.append(f"slot {plan.name}: rollback of its {kind} failed: {exc}")

    def delete_overlay(self, plan: SlotPlan) -> bool:
        if plan.overlay.is_lvm:
            for argv in lvm_remove_commands(plan.overlay.volume_group, plan.name):
                self.host.run(argv)
            return True
        return self.host.delete_volume(plan.pool, plan.spec.overlay_path)

    # -- starts -----------------------------------------------------------------------
    def queue_start(self, plan: SlotPlan, dom: Any) -> None:
        """Start an existing slot's domain with the others at the end (no rollback on failure)."""
        self._pending.append((plan, dom, None))

    def start_pending(self) -> Dict[str, str]:
        """Start the queued domains, ``start_concurrency`` at a time; the failures by slot name.

        Starting is most of a slot's creation time (QEMU's start-up); libvirtd starts domains
        in parallel, so 16 slots start in about half the time of one after the other. A new
        slot that fails to start is rolled back like any failed creation.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return {}

        def start(item: Tuple[SlotPlan, Any, Optional[Created]]) -> str:
            plan, dom, created = item
            try:
                dom.create()
            except libvirt.libvirtError as exc:
                if created is None:
                    return f"slot {plan.name}: start failed: {exc.get_error_message()}"
                self.rollback(plan, created)
                self.host.domains.pop(plan.name, None)
                return (
                    f"slot {plan.name}: start failed: {exc.get_error_message()}; nothing of this slot was left behind"
                )
            return ""

        workers = max(1, min(self.start_concurrency, len(pending)))
        if workers == 1:
            outcomes = [start(item) for item in pending]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                outcomes = list(pool.map(start, pending))
        return {item[0].name: outcome for item, outcome in zip(pending, outcomes) if outcome}
