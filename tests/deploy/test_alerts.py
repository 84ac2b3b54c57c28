"""deploy/prometheus: the alerting rules pass `promtool check rules`, their unit tests
(alerts_test.yml) pass `promtool test rules`, and a broken rule fails those same checks.
promtool is Debian's `prometheus` package (make system-tools)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
ALERTS = {"MnistHighErrorRate", "MnistLowConfidenceAnswers", "MnistDriftDetected"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    if shutil.which("promtool") is None:
        pytest.fail("no promtool: run `make system-tools` (Debian: apt-get install prometheus)")
    return subprocess.run(["promtool", *map(str, args)], capture_output=True, text=True, timeout=60)


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_rule_unit_tests_pass_and_cover_every_alert() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    [group] = yaml.safe_load(RULES.read_text())["groups"]
    assert {rule["alert"] for rule in group["rules"]} == ALERTS
    tested = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tested
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == ALERTS  # each alert has a case where it fires (and quiet ones beside)


@pytest.mark.parametrize(
    ("old", "new", "command"),
    [
        # A PromQL syntax error: check rules refuses the file.
        ("sum by (job) (rate(", "sum by (job) (rate((", "check"),
        # A threshold the unit tests pin down: test rules fails.
        ("> 0.05", "> 0.2", "test"),
    ],
)
def test_a_broken_rule_fails(tmp_path: Path, old: str, new: str, command: str) -> None:
    text = RULES.read_text()
    assert old in text
    (tmp_path / "alerts.yml").write_text(text.replace(old, new))
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    if command == "check":
        result = promtool("check", "rules", tmp_path / "alerts.yml")
    else:
        result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr
