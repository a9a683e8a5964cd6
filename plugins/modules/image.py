#!/usr/bin/python
# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image
short_description: Pre-stage one image version in a hypervisor's image cache
version_added: 0.1.0
description:
  - Downloads one image version into the hypervisor's image cache, verifies its size and sha512
    while it downloads, and only then moves it into the cache directory, which is the libvirt
    C(dir) storage pool slots clone their overlays from. Nothing half-downloaded or unverified is
    ever visible there.
  - The image comes either from an image list the hypervisor subscribed to with
    M(batchvirt.farm.image_subscription) (give O(identifier) and O(version), or V(latest)), or
    from an explicit O(source) with O(sha512) and O(size).
  - Transports are V(file://), V(http://) and V(https://) (resumable with HTTP C(Range), so a rerun
    after an interrupted download continues where it stopped), and BitTorrent (V(magnet:) links
    and V(.torrent) sources) when the collection's BitTorrent transport and libtorrent's Python
    binding (C(python3-libtorrent)) are installed.
  - Every change holds the cache's one lock, so two pre-stage runs on one hypervisor never
    overlap; the second waits up to O(lock_timeout) seconds, then fails naming the holder.
  - O(state=absent) removes one version, and O(state=pruned) every version no subscribed list
    endorses any more. Both refuse to remove an image that a slot still uses (a libvirt domain
    whose disk is, or is backed by, the image file, or a user registered in the cache) unless
    O(force=true).
  - The cache's layout, states, history and event hooks are described in the collection's
    C(docs/images.md).
author:
  - batchvirt.farm contributors (@batchvirt)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - batchvirt.farm.attributes
  - batchvirt.farm.libvirt
attributes:
  check_mode:
    support: full
    details: Reports whether the image would be downloaded or removed; downloads nothing.
  diff_mode:
    support: none
options:
  identifier:
    description:
      - The image's C(dc:identifier) (in an image list usually a UUID).
      - Letters, digits, V(.), V(_), V(+), V(~) and V(-) only; anything that could escape the cache
        directory is refused.
      - Required unless O(state=pruned).
    type: str
  version:
    description:
      - The image's C(hv:version).
      - V(latest) takes the highest version a currently accepted list endorses (entry not expired), or
        one staged explicitly without a list, in the collection's one version order (V(1.10) after
        V(1.9)). A withdrawn or expired version is never selected, also not by an explicit version
        without O(source); the task fails saying nothing is endorsed.
      - With O(source), and with O(state=absent), give an explicit version.
    type: str
    default: latest
  state:
    description:
      - V(present) stages the image and returns its path and volume.
      - V(absent) removes this version from the cache (the database keeps its history).
      - V(pruned) removes every image that came from a subscribed list and that no accepted list
        endorses any more (or whose endorsement expired); images still used by slots are kept and
        reported in RV(kept).
    type: str
    default: present
    choices: [present, absent, pruned]
  source:
    description:
      - Where to download the image from when it does not come from a subscribed list, for example
        V(https://images.example.org/worker-2026.11.qcow2) or V(file:///srv/images/worker.qcow2).
      - Needs O(sha512), O(size) and an explicit O(version).
    type: str
    aliases: [url]
  sha512:
    description:
      - The image's sha512 checksum (128 hexadecimal digits). Required with O(source).
      - For a subscribed image it is optional and, when given, must equal the endorsed checksum.
    type: str
  size:
    description: The image's size in bytes. Required with O(source).
    type: int
  format:
    description:
      - The image's format (V(qcow2), V(raw), ...), used as the file name extension of the volume.
        Subscribed images take the format their list gives.
    type: str
    default: qcow2
  force:
    description:
      - With O(state=absent) or O(state=pruned), remove images even while slots still use them.
        Their overlays then fail on their next start; use it only when those slots are being
        destroyed anyway.
    type: bool
    default: false
  root:
    description:
      - The cache directory, which is also the directory of the libvirt storage pool O(pool).
      - The database, the lock and partial downloads live beside it in C(<root>.cache/), on the
        same filesystem, so that a verified file is moved into place with an atomic rename.
    type: path
    default: /var/lib/batchvirt/images
  pool:
    description: The libvirt C(dir) storage pool over O(root), refreshed after a change.
    type: str
    default: batchvirt-images
  refresh_pool:
    description: Refresh O(pool) after a change so that libvirt lists the new volume.
    type: bool
    default: true
  timeout:
    description: Seconds without any data before a stalled download fails (its partial file is kept).
    type: int
    default: 60
  connect_timeout:
    description: Seconds to connect to the image server.
    type: int
    default: 30
  lock_timeout:
    description: Seconds to wait for another deploy on this hypervisor to release the cache lock.
    type: int
    default: 600
  event_hook:
    description:
      - A shell command run when an image becomes ready or is expired, with the environment
        variables C(FARM_EVENT_TYPE) (V(ready) or V(expired)), C(FARM_EVENT_IDENTIFIER),
        C(FARM_EVENT_VERSION), C(FARM_EVENT_PATH), C(FARM_EVENT_VOLUME), C(FARM_EVENT_POOL),
        C(FARM_EVENT_SHA512), C(FARM_EVENT_SIZE), C(FARM_EVENT_FORMAT), C(FARM_EVENT_URI),
        C(FARM_EVENT_LIST), C(FARM_EVENT_REASON) and C(FARM_EVENT_TIME).
      - A failing hook is reported as a warning; the image stays ready (or expired).
    type: str
  validate_certs:
    description: Verify the image server's TLS certificate for V(https://) sources.
    type: bool
    default: true
  allow_file_uri:
    description: Allow V(file://) sources (from O(source) or from a subscribed list).
    type: bool
    default: true
  transport_options:
    description:
      - Options passed to the BitTorrent transport for V(magnet:) and V(.torrent) sources (see the
        collection's C(docs/images-bittorrent.md)), for example C(trackers), C(state_dir),
        C(listen_port), C(total_timeout) (seconds for the whole download, default 3600),
        C(web_seed_delay) (seconds without data from any peer before the image server's URL is
        used, default 3), C(seed_for_seconds) (keep seeding the ready image for that long; the
        detached libtorrent process that downloaded it goes on seeding, also while the image is
        verified, and outlives the play), and C(swarm_index) with C(swarm_size) (this host's
        share among the hosts fetching together; the C(image_cache) role sets them).
      - Ignored for other sources.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Pre-stage the latest worker image the site list endorses
  batchvirt.farm.image:
    identifier: 5c4d0f4e-8d3b-4c7e-9c1e-2a9f0f6b3a11
    version: latest
  register: worker_image

- name: Pre-stage an image from an explicit URL
  batchvirt.farm.image:
    identifier: worker-el9
    version: "2026.11.1"
    source: https://images.example.org/worker-el9-2026.11.1.qcow2
    sha512: "{{ lookup('ansible.builtin.file', 'worker-el9-2026.11.1.qcow2.sha512') }}"
    size: 2147483648

- name: Remove an old version (refused while slots use it)
  batchvirt.farm.image:
    identifier: worker-el9
    version: "2026.10.3"
    state: absent

- name: Remove everything the subscribed lists no longer endorse
  batchvirt.farm.image:
    state: pruned
"""

RETURN = r"""
identifier:
  description: The image identifier.
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
version:
  description: The staged version (the resolved one for O(version=latest)).
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
  sample: "2026.11.1"
state:
  description: The image's cache state, V(ready), V(partial), V(failed) or V(expired).
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
path:
  description: The absolute path of the verified image file (the base of slot overlays).
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
  sample: /var/lib/batchvirt/images/worker-el9_2026.11.1.qcow2
volume:
  description: The image's volume name in the storage pool RV(pool).
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
  sample: worker-el9_2026.11.1.qcow2
pool:
  description: The libvirt storage pool holding the volume.
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
  sample: batchvirt-images
sha512:
  description: The verified sha512 checksum.
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
size:
  description: The size in bytes.
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: int
format:
  description: The image format.
  returned: when O(state) is V(present) or V(absent) and the image is known
  type: str
transferred:
  description: Bytes downloaded by this run (0 when the image was already ready).
  returned: when O(state=present)
  type: int
resumed_from:
  description: Bytes of an earlier interrupted download this run kept and resumed from.
  returned: when O(state=present)
  type: int
seconds:
  description: Seconds the download and verification took.
  returned: when O(state=present) and the image was staged
  type: float
users:
  description: The slots using the image (libvirt domains backed by it, registered users).
  returned: when O(state=absent)
  type: list
  elements: str
expired:
  description: The images O(state=pruned) removed (or would remove in check mode).
  returned: when O(state=pruned)
  type: list
  elements: dict
kept:
  description: Unendorsed images O(state=pruned) kept because slots still use them, with those slots.
  returned: when O(state=pruned)
  type: list
  elements: dict
"""

from ansible_collections.batchvirt.farm.plugins.module_utils._image_module import (  # noqa: E402 - after the docs, as Ansible modules do
    IMAGE_ARGUMENT_SPEC,
    ImageCacheError,
    ImageInUse,
    run_image,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import FarmLibvirtError, connect  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._module import FarmModule  # noqa: E402


class _ImageModule(FarmModule):
    """RV(state) is the cache state: keep AnsibleModule from replacing it with file facts of RV(path)."""

    def add_path_info(self, kwargs):  # type: ignore[no-untyped-def]
        return kwargs


def main() -> None:
    module = _ImageModule(
        argument_spec=IMAGE_ARGUMENT_SPEC,
        needs_libvirt=True,
        supports_check_mode=True,
        required_if=[("state", "present", ("identifier",)), ("state", "absent", ("identifier",))],
    )
    conn = None
    try:
        conn = connect(module.params["uri"])
        result = run_image(module.params, module.check_mode, conn)
    except ImageInUse as exc:
        module.fail_json(msg=exc.message, users=exc.users)
    except (ImageCacheError, FarmLibvirtError) as exc:
        module.fail_from(exc)
    finally:
        if conn is not None:
            conn.close()
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
