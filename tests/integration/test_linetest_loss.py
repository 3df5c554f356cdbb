"""A link that drops 20% of packets turns the line amber, with the loss as the reason.

The test makes a network namespace of its own and runs a whole line inside it
(`tests/linetest_loss_worker.py`): iptables there drops a fifth of the UDP
packets each way, so the media of the test call loses them while the
signaling (TCP) does not. What is checked is what an operator would see: the
line test's verdict, the status page, ``/metrics`` (read with the Prometheus
client's parser) and the signed webhook.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from parley.server.alerts import KEY_HEADER, SIGNATURE_HEADER, verify_body

LINE = "moscow:washington"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def namespace() -> str:
    if os.geteuid() != 0:
        pytest.fail("network namespaces and iptables need root: run scripts/test as root")
    name = f"parley-test-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_twenty_percent_loss_shows_amber_with_the_measured_loss_everywhere(
        tmp_path: Path, namespace: str) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"root": str(tmp_path / "line"), "loss": 0.2,
                               "duration_s": 8.0}))
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-m",
                           "tests.linetest_loss_worker", str(job)], cwd=ROOT,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # The line test: completed, verified and signed by both ends, amber for its loss.
    result = out["result"]
    assert result["status"] == "amber", result
    assert result["verified"] and sorted(result["signed_by"]) == ["moscow/testset",
                                                                   "washington/testset"]
    losses = [way["loss_pct"] for way in result["ways"].values()]
    assert all(11 <= loss <= 30 for loss in losses), losses
    (reason,) = [r for r in result["reasons"] if r.startswith("loss ")]
    shown = float(re.match(r"loss ([\d.]+)% each way > 5%", reason).group(1))  # type: ignore
    assert abs(shown - max(losses)) < 0.051, (reason, losses)

    # The status page: amber, with that reason.
    page = out["status_page"]
    assert f'data-line="{LINE}"' in page and 'data-status="amber"' in page
    assert html.escape(reason) in page

    # /metrics: the line amber (1), the test a success, the loss each way.
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(out["metrics"])
               for s in family.samples}
    assert samples[("parley_line_status", (("line", LINE),))] == 1
    assert samples[("parley_linetest_success", (("line", LINE),))] == 1
    for way in ("washington->moscow", "moscow->washington"):
        ratio = samples[("parley_linetest_loss_ratio", (("direction", way), ("line", LINE)))]
        assert 0.11 <= ratio <= 0.30, (way, ratio)
    assert samples[("parley_linetest_duration_seconds", (("line", LINE),))] >= 8

    # The webhook: firing, amber, the loss as the reason, signed by the server.
    body = base64.urlsafe_b64decode(out["webhook"]["body"] + "==")
    headers = out["webhook"]["headers"]
    assert headers[KEY_HEADER] == out["alert_key"]
    assert verify_body(out["alert_key"], body, headers[SIGNATURE_HEADER])
    alert = json.loads(body)
    assert alert["status"] == "firing" and alert["alerts"][0]["labels"]["status"] == "amber"
    assert alert["alerts"][0]["labels"]["severity"] == "warning"
    assert reason in alert["alerts"][0]["annotations"]["reasons"]
