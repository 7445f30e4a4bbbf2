"""`bedrock-proxy policy check` against the real OPA and the real policies."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHAT = "spiffe://example.org/ns/demo/sa/chat"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "policy", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_allowed_request_exits_zero_with_obligations(opa_url: str) -> None:
    result = check("--opa-url", opa_url, "--request", "--spiffe-id", CHAT, "--model", HAIKU)
    assert result.returncode == 0, result.stderr
    assert "allow: true" in result.stdout
    assert "bedrock-runtime-demo" in result.stdout


def test_denied_request_exits_one_with_every_reason(opa_url: str) -> None:
    result = check(
        "--opa-url",
        opa_url,
        "--request",
        "--spiffe-id",
        CHAT,
        "--model",
        "global.anthropic.claude-3-5-sonnet-20240620-v1:0",
        "--classification",
        "confidential",
        "--tools",
        "lookup,shell_exec",
    )
    assert result.returncode == 1
    assert "allow: false" in result.stdout
    assert "reason: geo_classification_too_high:" in result.stdout
    assert "reason: tool_not_allowed: tool shell_exec" in result.stdout


def test_input_file_is_evaluated_as_is(opa_url: str, tmp_path: Path) -> None:
    document = {
        "identity": {
            "spiffe_id": "spiffe://example.org/ns/demo/sa/nobody",
            "trust_domain": "example.org",
        },
        "request": {"operation": "Converse", "region": "us-east-1"},
    }
    path = tmp_path / "input.json"
    path.write_text(json.dumps({"input": document}))
    result = check("--opa-url", opa_url, str(path))
    assert result.returncode == 1
    assert "workload_not_registered" in result.stdout


def test_bad_invocations_exit_two_with_a_message(opa_url: str) -> None:
    no_opa = check(
        "--opa-url", "http://127.0.0.1:9", "--request", "--spiffe-id", CHAT, "--model", HAIKU
    )
    assert no_opa.returncode == 2
    assert "OPA at http://127.0.0.1:9" in no_opa.stderr
    bad_id = check(
        "--opa-url", opa_url, "--request", "--spiffe-id", "spiffe://Example.org/x", "--model", HAIKU
    )
    assert bad_id.returncode == 2 and "bedrock-proxy policy check:" in bad_id.stderr
    nothing = check("--opa-url", opa_url)
    assert nothing.returncode == 2 and "--request" in nothing.stderr
