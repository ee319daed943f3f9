"""deploy/: the systemd unit, the pm2 ecosystem file, the example environment file and the
Grafana dashboard are valid and agree with the code."""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from gateway import __version__
from gateway.metrics import Metrics, OutboxCollector, SessionCollector
from gateway.settings import Settings
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
INSTALL_DIR = "/opt/wagate"


def unit() -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / "wagate.service").read_text())
    return {section: dict(parser[section]) for section in parser.sections()}


def test_the_systemd_unit_has_what_the_gateway_relies_on() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert int(service["WatchdogSec"]) >= 10
    assert service["Restart"] == "on-failure"
    # wagate stops its own workers and PostgreSQL: the signal goes to the main process only,
    # and the stop timeout covers the gateway's own bounded shutdown (about 30 s at worst).
    assert service["KillMode"] == "mixed"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 40
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert service["ReadWritePaths"] == f"{INSTALL_DIR}/var"
    assert service["WorkingDirectory"] == INSTALL_DIR
    assert service["ExecStart"] == f"{INSTALL_DIR}/.venv/bin/python run.py serve"
    assert service["EnvironmentFile"].lstrip("-") == "/etc/wagate/wagate.env"
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")  # the test above still parsed the unit
    # verify checks that ExecStart exists: point the unit at this checkout.
    text = (DEPLOY / "wagate.service").read_text().replace(INSTALL_DIR, str(ROOT))
    text = re.sub(r"^(User|Group)=wagate$", r"\1=root", text, flags=re.M)
    path = tmp_path / "wagate.service"
    path.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "wagate.service" in line or "Unknown" in line or "Failed" in line
    ]
    assert result.returncode == 0, result.stderr
    assert problems == []


def test_pm2_ecosystem_file_loads_in_node() -> None:
    if shutil.which("node") is None:
        pytest.fail("node is needed to check deploy/ecosystem.config.js")
    script = "console.log(JSON.stringify(require('./deploy/ecosystem.config.js')))"
    result = subprocess.run(
        ["node", "-e", script], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    (app,) = json.loads(result.stdout)["apps"]
    assert app["name"] == "wagate"
    assert app["interpreter"] == str(ROOT / ".venv" / "bin" / "python")
    assert app["script"] == str(ROOT / "run.py")
    assert app["args"] == "serve"
    assert app["cwd"] == str(ROOT)
    assert app["instances"] == 1
    assert app["kill_timeout"] >= 40000
    assert app["treekill"] is False
    for key in ("out_file", "error_file"):
        assert app[key].startswith(str(ROOT / "var" / "log"))


def test_the_example_environment_names_only_real_settings() -> None:
    known = {f"WAGATE_{name.upper()}" for name in Settings.model_fields}
    lines = (DEPLOY / "wagate.env.example").read_text().splitlines()
    named = [m.group(1) for line in lines if (m := re.match(r"^#?(WAGATE_[A-Z_]+)=", line.strip()))]
    assert named
    assert set(named) <= known, set(named) - known
    active = {
        line.split("=", 1)[0]: line.split("=", 1)[1] for line in lines if line.startswith("WAGATE_")
    }
    Settings(_env_file=None, **{k.removeprefix("WAGATE_").lower(): v for k, v in active.items()})


def test_the_grafana_dashboard_uses_only_metrics_we_export() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used = {name for expr in exprs for name in re.findall(r"\b(wagate_[a-z_]+)", expr)}
    registry = CollectorRegistry()
    Metrics(registry, __version__)
    idle = SimpleNamespace(states={}, history={}, all_stats=dict, ingest_backlog=lambda _: 0)
    registry.register(SessionCollector(idle))  # type: ignore[arg-type]
    registry.register(OutboxCollector(None, []))  # type: ignore[arg-type]
    exported = {
        f"{family.name}{suffix}"
        for family in registry.collect()
        for suffix in ("", "_total", "_bucket", "_count", "_sum")
    }
    assert used <= exported, used - exported
