"""`bedrock-proxy dev up` and `dev-ca issue` as a user runs them: the whole local
stack from the command line, one SDK call through it, and a clean stop."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.certs import CertPair
from tests.conftest import CHAT, HAIKU, bedrock_client

STACK_KEYS = {
    "proxy_url", "admin_url", "region", "ca_bundle", "dev_ca_dir", "trust_domain",
    "emulator_url", "opa_url", "audit_log",
}  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "proxy", *args]


def test_dev_up_serves_a_call_and_stops_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "stack"
    stack = subprocess.Popen(
        _cli("dev", "up", "--dir", str(directory)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        stack_file = directory / "stack.json"
        deadline = time.monotonic() + 60
        while not stack_file.exists():
            assert stack.poll() is None, stack.stderr.read() if stack.stderr else ""
            assert time.monotonic() < deadline, "dev up wrote no stack.json within 60 s"
            time.sleep(0.1)
        info = json.loads(stack_file.read_text())
        assert STACK_KEYS <= set(info)

        issued = subprocess.run(
            _cli("dev-ca", "issue", "--dir", info["dev_ca_dir"], "--spiffe-id", CHAT,
                 "--out", "e2e-client"),
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        svid = CertPair(*(Path(p) for p in issued.stdout.split()))
        client = bedrock_client(info["proxy_url"], Path(info["ca_bundle"]), svid)
        try:
            answer = client.converse(
                modelId=HAIKU, messages=[{"role": "user", "content": [{"text": "hi"}]}]
            )
        finally:
            client.close()
        assert answer["stopReason"] == "end_turn"
        # The SDK sees Bedrock's request id; the proxy's own id ties the records together.
        # The completed record is written just after the client read the last byte.
        aws_id = answer["ResponseMetadata"]["RequestId"]
        deadline = time.monotonic() + 10
        while True:
            lines = Path(info["audit_log"]).read_text().splitlines()
            records = [json.loads(line) for line in lines]
            completed = [r for r in records if r.get("aws_request_id") == aws_id]
            if completed or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(completed) == 1, "no completed record for the call"
        ours = [r["event"] for r in records if r.get("request_id") == completed[0]["request_id"]]
        assert ours == ["authorized", "completed"] and completed[0]["outcome"] == "ok"
    finally:
        stack.send_signal(signal.SIGTERM)
        code = stack.wait(60)
        if stack.stderr is not None:
            stack.stderr.close()
    assert code == 0
    assert not (directory / "stack.json").exists()
