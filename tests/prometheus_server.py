"""A real Prometheus server (Debian's ``prometheus`` package) for integration tests.

It runs the project's own ``deploy/prometheus/prometheus.yml`` and ``rules.yml``, with only the
scrape target, the intervals and the paths rewritten for the test, on a free loopback port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

from pipeline.broker import free_port

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"


class PrometheusServer:
    """``prometheus`` scraping one rnncast target every second."""

    def __init__(self, workdir: Path, target: str):
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed: run scripts/install_system_deps.sh (Debian package 'prometheus')"
            )
        config = yaml.safe_load(CONFIG.read_text())
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["rule_files"] = [str(RULES)]
        (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "rnncast"]
        job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
        job["static_configs"] = [{"targets": [target]}]
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(workdir)

    def _wait_ready(self, workdir: Path, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("prometheus did not become ready")

    def api(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
