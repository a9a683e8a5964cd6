# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: fetching an image list — a path, ``file://``, ``http://`` or ``https://``.

HTTP goes through Ansible's ``open_url`` (proxy variables honoured, https→http redirects
refused by ``follow_redirects="safe"``). A list is never read past ``max_bytes`` (checked on
``Content-Length`` first, then while reading), and the whole transfer is bounded by
``timeout``, so a server that trickles bytes cannot hold a run for ever.
"""

from __future__ import annotations

import time
from typing import IO, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist_model import (
    CHUNK,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    SCHEME,
    ImageListError,
    check_size,
)


def fetch(
    url: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: int = DEFAULT_TIMEOUT,
    validate_certs: bool = True,
) -> bytes:
    """Read a list from a path, ``file://``, ``http://`` or ``https://`` URL, at most ``max_bytes``."""
    m = SCHEME.match(url)
    scheme = m.group(1).lower() if m and len(m.group(1)) > 1 else ""
    if scheme in ("", "file"):
        path = url[len("file://") :] if scheme == "file" else url
        try:
            with open(path, "rb") as fh:
                return _read_limited(fh, max_bytes)
        except OSError as exc:
            raise ImageListError(
                f"url: cannot read {path!r}: {exc.strerror}; check O(url)", "fetch_failed", "url"
            ) from None
    if scheme not in ("http", "https"):
        raise ImageListError(
            f"url: the scheme {scheme!r} is not supported; use a path, file://, http:// or https://",
            "forbidden_uri",
            "url",
        )
    from ansible.module_utils.urls import open_url

    try:
        resp = open_url(url, timeout=timeout, validate_certs=validate_certs, follow_redirects="safe")
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise ImageListError(
                f"the image list is {length} bytes (Content-Length), more than the limit of {max_bytes} bytes "
                "(O(max_size)); refused before reading — check the URL, or raise the limit",
                "too_large",
                "max_size",
            )
        return _read_limited(resp, max_bytes, time.monotonic() + timeout)
    except ImageListError:
        raise
    except Exception as exc:  # urllib raises many types: HTTPError, URLError, socket.timeout, ...
        code = getattr(exc, "code", None)
        what = f"HTTP {code}" if code else str(getattr(exc, "reason", "") or exc)
        raise ImageListError(
            f"url: cannot fetch {url}: {what} (timeout {timeout}s); check O(url) and that the server is up",
            "fetch_failed",
            "url",
        ) from None


def _read_limited(fh: IO[bytes], max_bytes: int, deadline: Optional[float] = None) -> bytes:
    """Read at most ``max_bytes`` (+1 to notice more); a server that trickles bytes slower than
    the whole-transfer ``deadline`` (a ``time.monotonic()`` value) is given up on."""
    chunks: List[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = fh.read(min(CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if deadline is not None and time.monotonic() > deadline:
            raise ImageListError(
                f"url: the transfer did not finish within the timeout ({total} bytes read); "
                "check the server, or raise O(timeout)",
                "fetch_failed",
                "url",
            )
    data = b"".join(chunks)
    check_size(data, max_bytes)
    return data
