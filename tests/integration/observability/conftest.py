"""Fixtures of the observability area: Debian's prometheus-node-exporter serving a textfile
directory and a real Prometheus scraping it, both on 127.0.0.1 ports of their own."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a 127.0.0.1 test URL
                if resp.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout} s")
        time.sleep(0.5)


@dataclass
class Monitoring:
    textfile_dir: str
    node_url: str
    prometheus_url: str

    def query(self, promql: str) -> List[Dict[str, Any]]:
        url = self.prometheus_url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a 127.0.0.1 test URL
            data = json.load(resp)
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def value(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, f"{promql}: {result}"
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, timeout: float = 60) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Prometheus has no {promql} after {timeout} s")
            time.sleep(1)


@pytest.fixture
def monitoring(hostbed):
    """node_exporter (textfile collector only) and Prometheus scraping it every second."""
    textfile_dir = os.path.join(hostbed.tmp, "textfile")
    os.makedirs(textfile_dir)
    node_port, prom_port = free_port(), free_port()
    node = subprocess.Popen(
        [
            "prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{node_port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={textfile_dir}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(hostbed.tmp, "node-exporter.log"), "wb"),  # noqa: SIM115
    )
    hostbed.process(node)
    wait_http(f"http://127.0.0.1:{node_port}/metrics")
    config = os.path.join(hostbed.tmp, "prometheus.yml")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: node\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{node_port}']\n"
        )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={os.path.join(hostbed.tmp, 'tsdb')}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(hostbed.tmp, "prometheus.log"), "wb"),  # noqa: SIM115
    )
    hostbed.process(prom)
    wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
    return Monitoring(textfile_dir, f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{prom_port}")
