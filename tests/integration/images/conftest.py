"""Fixtures of the images area: a real HTTP image server on 127.0.0.1 and image files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pytest

from tests.integration.images._server import ImageServer


@dataclass
class ImageFile:
    name: str
    path: str
    size: int
    sha512: str


def make_image(directory: str, name: str, size: int, seed: int = 0) -> ImageFile:
    """A file of ``size`` pseudo-random bytes (incompressible, reproducible from ``seed``)."""
    path = os.path.join(directory, name)
    block = hashlib.sha512(b"seed-%d" % seed).digest() * 1024  # 64 KiB
    digest = hashlib.sha512()
    with open(path, "wb") as fh:
        left, counter = size, 0
        while left > 0:
            chunk = hashlib.sha512(b"%d-%d" % (seed, counter)).digest() + block
            chunk = chunk[: min(left, len(chunk))]
            fh.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
            counter += 1
    return ImageFile(name=name, path=path, size=size, sha512=digest.hexdigest())


@pytest.fixture
def served(tmp_path):
    """A directory of images served over HTTP: ``served.add(name, size)`` then ``served.url(name)``."""
    directory = tmp_path / "www"
    directory.mkdir()

    class Served:
        def __init__(self) -> None:
            self.server = ImageServer(str(directory)).start()
            self.directory = str(directory)

        def add(self, name: str, size: int = 3 * 1024 * 1024 + 17, seed: int = 0) -> ImageFile:
            return make_image(self.directory, name, size, seed)

        def url(self, name: str) -> str:
            return self.server.url(name)

    served = Served()
    yield served
    served.server.stop()
