"""_transfer without a network: file:// copies, resume, the size cap, schemes, the hash pipeline."""

from __future__ import annotations

import hashlib
import os

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _transfer_sink
from ansible_collections.batchvirt.farm.plugins.module_utils._transfer import TransferError, fetch

DATA = os.urandom(5 * 1024 * 1024 + 123)
SHA = hashlib.sha512(DATA).hexdigest()


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "image.raw"
    path.write_bytes(DATA)
    return "file://%s" % path


def test_file_copy_hashes_in_the_same_pass(tmp_path, source):
    dest = str(tmp_path / "out.part")
    result = fetch(source, dest, len(DATA), SHA)
    assert (result.transferred, result.resumed_from, result.sha512) == (len(DATA), 0, SHA)
    with open(dest, "rb") as fh:
        assert fh.read() == DATA


def test_file_copy_resumes_a_correct_prefix(tmp_path, source):
    dest = tmp_path / "out.part"
    dest.write_bytes(DATA[:3_000_000])
    result = fetch(source, str(dest), len(DATA), SHA)
    assert result.resumed_from == 3_000_000 and result.transferred == len(DATA) - 3_000_000
    assert dest.read_bytes() == DATA


def test_corrupt_prefix_is_caught_by_the_final_hash(tmp_path, source):
    dest = tmp_path / "out.part"
    dest.write_bytes(b"x" * 1000)
    with pytest.raises(TransferError) as err:
        fetch(source, str(dest), len(DATA), SHA)
    assert "sha512 mismatch for %s" % source in err.value.message and not err.value.resumable


def test_partial_longer_than_the_image_starts_over(tmp_path, source):
    dest = tmp_path / "out.part"
    dest.write_bytes(DATA + b"garbage")
    result = fetch(source, str(dest), len(DATA), SHA)
    assert result.resumed_from == 0 and dest.read_bytes() == DATA


def test_size_mismatch_of_a_file_source(tmp_path, source):
    with pytest.raises(TransferError) as err:
        fetch(source, str(tmp_path / "o"), len(DATA) - 1, SHA)
    assert "the file has %d bytes, the list publishes %d" % (len(DATA), len(DATA) - 1) in err.value.message


def test_sink_refuses_more_than_the_published_size(tmp_path):
    sink = _transfer_sink.Sink("http://x/i", str(tmp_path / "o"), 10, 0)
    sink.write(b"12345")
    with pytest.raises(TransferError) as err:
        sink.write(b"123456")
    sink.abort()
    assert "sends more than the published size of 10 bytes" in err.value.message
    assert (tmp_path / "o").read_bytes() == b"12345"  # the prefix stays correct


def test_sink_reports_a_truncated_download_as_resumable(tmp_path):
    sink = _transfer_sink.Sink("http://x/i", str(tmp_path / "o"), 10, 0)
    sink.write(b"12345")
    with pytest.raises(TransferError) as err:
        sink.finish(hashlib.sha512(b"1234567890").hexdigest(), fsync=True)
    assert err.value.resumable and "ended after 5 of 10 bytes" in err.value.message


def test_writer_failure_surfaces_as_transfer_error(tmp_path):
    sink = _transfer_sink.Sink("http://x/i", str(tmp_path / "o"), 1 << 30, 0)

    def disk_full(_chunk):
        raise OSError(28, "No space left on device")

    sink.fh.write = disk_full  # type: ignore[method-assign]
    with pytest.raises(TransferError) as err:
        for _chunk in range(100):
            sink.write(b"x" * 1024)
        sink.finish("0" * 128, fsync=False)
    assert "cannot write %s: [Errno 28] No space left on device" % (tmp_path / "o") in err.value.message


@pytest.mark.parametrize("uri", ["ftp://host/x", "gopher://h/x", "data:,x", "/no/scheme"])
def test_unsupported_schemes(tmp_path, uri):
    with pytest.raises(TransferError) as err:
        fetch(uri, str(tmp_path / "o"), 1, SHA)
    assert "unsupported source scheme" in err.value.message


def test_file_source_can_be_forbidden(tmp_path, source):
    with pytest.raises(TransferError) as err:
        fetch(source, str(tmp_path / "o"), len(DATA), SHA, allow_file=False)
    assert "file:// sources are not allowed" in err.value.message
    assert not os.path.exists(str(tmp_path / "o"))


def test_missing_file_source(tmp_path):
    with pytest.raises(TransferError) as err:
        fetch("file:///nonexistent/image.raw", str(tmp_path / "o"), 1, SHA)
    assert "cannot read /nonexistent/image.raw" in err.value.message
