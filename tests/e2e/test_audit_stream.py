"""The audit stream end to end: write-ahead refusal, drain on SIGTERM, crash
evidence after SIGKILL, a live log unsealed until the proxy stops, injection-proof
records, one terminal record per request."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from proxy.audit.chain import generate_key
from tests.conftest import (
    CHAT,
    HAIKU,
    PROJECT_ROOT,
    Emulator,
    ProxyFactory,
    ProxyHandle,
    children_of,
    wait_for,
)

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]


@pytest.fixture
def signed(proxy_factory: ProxyFactory, opa_url: str, tmp_path: Path) -> tuple[ProxyHandle, Path]:
    key = tmp_path / "audit.key"
    public = generate_key(key)
    proxy = proxy_factory(
        opa_url, audit_options={"signing_key": str(key)}, shutdown_grace_ms=10_000
    )
    return proxy, public


def audit_verify(proxy: ProxyHandle, public: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "audit",
            "verify",
            "--public-key",
            str(public),
            *map(str, proxy.audit_files()),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def stream_in_background(proxy: ProxyHandle) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    seen = sum(r["event"] == "authorized" for r in proxy.records(settled=False))

    def run() -> None:
        try:
            response = proxy.client().converse_stream(modelId=HAIKU, messages=MESSAGES)
            outcome.append([event for event in response["stream"]])
        except Exception as exc:  # the assertion below shows what happened
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: sum(r["event"] == "authorized" for r in proxy.records(settled=False)) > seen)
    return thread, outcome


def test_sigterm_mid_stream_drains_and_writes_completed(
    signed: tuple[ProxyHandle, Path], emulator: Emulator
) -> None:
    proxy, public = signed
    emulator.fault("slow", delay_ms=300)
    thread, outcome = stream_in_background(proxy)
    proxy.process.send_signal(signal.SIGTERM)
    thread.join(30)
    assert isinstance(outcome[0], list) and outcome[0], outcome
    proxy.process.wait(30)
    completed = [r for r in proxy.records() if r["event"] == "completed"]
    assert [r["outcome"] for r in completed] == ["ok"]
    result = audit_verify(proxy, public)
    assert result.returncode == 0, result.stdout


def test_verify_calls_a_live_log_incomplete_and_the_stopped_log_sealed(
    signed: tuple[ProxyHandle, Path],
) -> None:
    proxy, public = signed
    proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    live = audit_verify(proxy, public)
    # Only the shutdown checkpoint closes a chain: until then a cut tail looks the same.
    assert live.returncode == 3, live.stdout
    assert "still running, crashed, or the tail was cut" in live.stdout
    assert "TAMPERED" not in live.stdout
    proxy.process.send_signal(signal.SIGTERM)
    proxy.process.wait(30)
    stopped = audit_verify(proxy, public)
    assert stopped.returncode == 0, stopped.stdout


def test_sigkill_mid_stream_leaves_an_open_request_and_an_intact_chain(
    signed: tuple[ProxyHandle, Path], emulator: Emulator
) -> None:
    proxy, public = signed
    proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    emulator.fault("slow", delay_ms=500)
    thread, _ = stream_in_background(proxy)
    (worker,) = children_of(proxy.process.pid)
    os.kill(worker, signal.SIGKILL)
    thread.join(30)
    # The worker is started again and resumes the chain; then the proxy is stopped.
    wait_for(lambda: any(r["event"] == "chain_resumed" for r in proxy.all_records()), 15)
    proxy.process.send_signal(signal.SIGTERM)
    proxy.process.wait(30)
    authorized = [r for r in proxy.records(settled=False) if r["event"] == "authorized"]
    open_id = authorized[-1]["request_id"]
    [resumed] = [r for r in proxy.all_records() if r["event"] == "chain_resumed"]
    assert resumed["previous_sealed"] is False, "the chain says its predecessor crashed"
    result = audit_verify(proxy, public)
    assert result.returncode == 3, result.stdout
    assert "OPEN" in result.stdout and open_id in result.stdout
    assert "TAMPERED" not in result.stdout


def test_unwritable_audit_refuses_with_503_and_forwards_nothing(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(opa_url)
    proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    before = len(emulator.requests())
    # The file is gone and its path cannot be a file again (works as root too,
    # where a read-only directory would not stop the write).
    proxy.audit_path.rename(proxy.audit_path.with_suffix(".moved"))
    proxy.audit_path.mkdir()
    status, headers, _ = proxy.raw(
        "POST",
        f"/model/{HAIKU}/converse",
        body=b'{"messages":[]}',
        headers={"Content-Type": "application/json"},
    )
    assert status == 503
    assert headers["x-amzn-ErrorType"] == "ServiceUnavailableException"
    assert len(emulator.requests()) == before
    shutil.rmtree(proxy.audit_path)


@pytest.mark.parametrize(
    "evil", ['x\n{"event":"completed"}', "bidi\u202eevil", "esc\u001b[2J", "nul\u0000"]
)
def test_injection_in_model_id_and_headers_stays_escaped(
    proxy: ProxyHandle, emulator: Emulator, evil: str
) -> None:
    from urllib.parse import quote

    before = len(proxy.records())
    status, _, _ = proxy.raw(
        "POST",
        "/model/" + quote(evil, safe="") + "/converse",
        body=b'{"messages":[]}',
        headers={"Content-Type": "application/json", "X-Data-Classification": "ok"},
    )
    assert status in (400, 403, 404)
    raw = b"".join(path.read_bytes() for path in proxy.audit_files())
    assert raw.isascii() and b"\x1b" not in raw and b"\x00" not in raw
    new = proxy.records()[before:]
    assert [r["event"] for r in new] == ["denied"]


def test_mixed_run_has_one_terminal_record_per_request(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(opa_url)  # its own credential cache: the STS refusal below is certain
    good = b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}'
    json_headers = {"Content-Type": "application/json"}
    connections_before = sum(1 for r in proxy.all_records() if r["event"] == "connection")
    # A handshake without a client certificate: no request, one connection record.
    bare = proxy.connection(None)
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        bare.request("POST", f"/model/{HAIKU}/converse", body=good, headers=json_headers)
        bare.getresponse()
    bare.close()
    ids, statuses = [], []
    for path, body, fault in (
        (f"/model/{HAIKU}/converse", b"{not json", None),  # 400
        ("/model/meta.llama3-70b-instruct-v1:0/converse", good, None),  # 403 by policy
        (f"/model/{HAIKU}/converse", good, "throttle"),  # upstream 429, passed through
        (f"/model/{HAIKU}/converse", good, None),  # 200
    ):
        if fault:
            emulator.fault(fault, count=1)
        status, headers, _ = proxy.raw("POST", path, body=body, headers=json_headers)
        ids.append(headers["x-amzn-RequestId"])
        statuses.append(status)
    # 503: a new credential scope (another classification) and STS refuses it.
    emulator.fault("sts_deny", count=1)
    status, headers, _ = proxy.raw(
        "POST",
        f"/model/{HAIKU}/converse",
        body=good,
        headers={**json_headers, "X-Data-Classification": "public"},
    )
    ids.append(headers["x-amzn-RequestId"])
    statuses.append(status)
    assert statuses == [400, 403, 429, 200, 503]
    connections = [r for r in proxy.all_records() if r["event"] == "connection"]
    assert len(connections) == connections_before + 1
    assert "peer_did_not_return_a_certificate" in connections[-1]["reason"]
    for request_id in ids:
        terminal = [
            r for r in proxy.request_of(request_id) if r["event"] in ("completed", "denied")
        ]
        assert len(terminal) == 1, (request_id, terminal)


def test_ocsf_stream_maps_a_real_call_and_still_verifies(
    proxy_factory: ProxyFactory, opa_url: str, tmp_path: Path
) -> None:
    key = tmp_path / "audit.key"
    public = generate_key(key)
    proxy = proxy_factory(opa_url, audit_options={"signing_key": str(key), "format": "ocsf"})
    answer = proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    with pytest.raises(ClientError):
        proxy.client().converse(modelId="meta.llama3-70b-instruct-v1:0", messages=MESSAGES)
    proxy.close_clients()
    proxy.process.send_signal(signal.SIGTERM)
    proxy.process.wait(30)
    events = [r for r in proxy.all_records() if r.get("class_uid") == 6003]
    by_kind = {e["activity_name"]: e for e in events}
    assert set(by_kind) == {"authorized", "completed", "denied"}
    done, denied = by_kind["completed"], by_kind["denied"]
    assert (done["status_id"], done["status"], done["severity_id"]) == (1, "Success", 1)
    assert done["actor"]["user"] == {"uid": CHAT, "type": "Workload", "org": {"name": "team-demo"}}
    assert done["api"]["operation"] == "Converse" and done["api"]["response"]["code"] == 200
    assert done["resources"][0]["name"] == HAIKU
    assert done["unmapped"]["aws_request_id"] == answer["ResponseMetadata"]["RequestId"]
    assert done["metadata"]["uid"] == by_kind["authorized"]["metadata"]["uid"]
    assert (denied["status_id"], denied["severity_id"]) == (2, 3)
    assert denied["api"]["response"]["error"] == "policy_denied"
    result = audit_verify(proxy, public)
    assert result.returncode == 0, result.stdout


# --- amplification: what a caller sends is not copied without bound ---------------

FIXTURES = PROJECT_ROOT / "tests" / "fixtures"
# 128 tools of 64-character names: the most a request may declare.
TOOLS = {
    "tools": [
        {"toolSpec": {"name": f"t{i:03d}" + "x" * 60, "inputSchema": {"json": {"type": "object"}}}}
        for i in range(128)
    ]
}


def test_a_policy_echoing_input_into_many_reasons_gives_a_bounded_403_and_record(
    proxy_factory: ProxyFactory, start_opa: Any, emulator: Emulator
) -> None:
    # One reason with every tool name (8319 characters), one per tool, 1000 with the path.
    _, opa_url = start_opa(FIXTURES / "policies_echo_reasons")
    proxy = proxy_factory(opa_url)
    with pytest.raises(ClientError) as raised:
        proxy.client().converse(modelId=HAIKU, messages=MESSAGES, toolConfig=TOOLS)
    error = raised.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert error["Error"]["Code"] == "AccessDeniedException"
    message = error["Error"]["Message"]
    assert message.startswith("Denied by policy: t000" + "x" * 60 + ",t001")
    assert "...[+8079 chars]; tool_not_allowed: t000" in message
    assert " ... and 1124 more (decision " in message
    assert message.count("tool_not_allowed: ") == 4 and "echo " not in message
    assert len(message) < 1500
    assert emulator.requests() == []

    [record] = proxy.request_of(error["ResponseMetadata"]["RequestId"])
    assert (record["event"], record["outcome"]) == ("denied", "denied")
    reasons = record["decision"]["reasons"]
    assert len(reasons) == 5 and all(len(reason) <= 256 for reason in reasons)
    assert reasons[0].endswith("...[+8079 chars]")
    assert record["decision"]["reasons_omitted"] == 1124
    assert record["error"]["message"] == message
    assert "truncated" not in record  # bounded at the source: nothing left to cut
    assert max(len(line) for line in proxy.audit_path.read_bytes().splitlines()) < 16_384


def test_a_record_over_max_record_bytes_is_cut_and_the_log_still_verifies(
    proxy_factory: ProxyFactory, start_opa: Any, emulator: Emulator, tmp_path: Path
) -> None:
    # The obligations policy asks for a redacted capture: 32 KiB of "\u00e9" is 192 KiB
    # once JSON-escaped, over a 32 KiB record.
    _, opa_url = start_opa(FIXTURES / "policies_obligations")
    key = tmp_path / "audit.key"
    public = generate_key(key)
    limit = 32 * 1024
    proxy = proxy_factory(
        opa_url, audit_options={"signing_key": str(key), "max_record_bytes": limit}
    )
    prompt = [{"role": "user", "content": [{"text": "\u00e9" * 40_000}]}]
    answer = proxy.client().converse(modelId=HAIKU, messages=prompt)
    authorized, completed = proxy.request_of(answer["ResponseMetadata"]["RequestId"])
    assert authorized["event"] == "authorized" and completed["event"] == "completed"
    assert authorized["truncated"] == ["prompt.captured"]
    captured = authorized["prompt"]["captured"]
    assert captured["truncated"] is True and captured["original_bytes"] > limit
    assert len(authorized["prompt"]["sha256"]) == 64 and authorized["prompt"]["truncated"]
    assert authorized["spiffe_id"] == CHAT and authorized["model_id"] == HAIKU
    # One copy a request: the completed record has no capture of its own to cut.
    assert completed["prompt"]["captured"] is None and "truncated" not in completed
    proxy.close_clients()
    proxy.process.send_signal(signal.SIGTERM)
    proxy.process.wait(30)
    assert max(len(line) for line in proxy.audit_path.read_bytes().splitlines()) <= limit
    result = audit_verify(proxy, public)
    assert result.returncode == 0, result.stdout
