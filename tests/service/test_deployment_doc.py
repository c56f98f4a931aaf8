"""docs/deployment.md shows what is tested: the HAProxy configuration the tests render, valid
configurations, and orchestrator timeouts longer than the drain they wait for."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from .lb import haproxy_config, require_haproxy

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.S)


def test_the_documented_configuration_is_the_tested_one() -> None:
    servers = [(f"dbapi{i}", f"10.0.0.1{i}", 9180) for i in (1, 2, 3)]
    assert blocks("haproxy")[0] == haproxy_config(servers, bind=":9180", check_interval="1s")


def test_haproxy_accepts_every_documented_configuration(tmp_path: Path) -> None:
    binary = require_haproxy()
    found = blocks("haproxy")
    assert len(found) == 2
    for i, text in enumerate(found):
        config = tmp_path / f"haproxy-{i}.cfg"
        config.write_text(text)
        checked = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=60)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_orchestrators_wait_longer_than_the_drain() -> None:
    unit = blocks("ini")[0]
    manifests = [m for block in blocks("yaml") for m in yaml.safe_load_all(block) if m]
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == "dbapi"]
    spec = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    grace = float(env["DBAPI_SHUTDOWN_GRACE"])
    assert spec["terminationGracePeriodSeconds"] >= grace + 10
    assert float(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1)) >= grace + 10  # type: ignore[union-attr]
    probes = spec["containers"][0]
    assert probes["livenessProbe"]["httpGet"]["path"] == "/dbapi/v1/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/dbapi/v1/ready"
    (headless,) = [m for m in manifests if m["kind"] == "Service" and m["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["publishNotReadyAddresses"] is True
