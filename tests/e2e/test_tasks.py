"""Tasks end to end: real OPA, moto STS, the emulator, real redis-server, mTLS clients."""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from proxy_dev import devstack
from tests.conftest import CHAT, HAIKU, POLICIES, Emulator, Pki, ProxyHandle

ADMIN = "spiffe://example.org/ns/platform/sa/admin"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"
_CERT_LOCK = threading.Lock()
_CONTEXTS: dict[str, ssl.SSLContext] = {}
CONVERSE = {"messages": [{"role": "user", "content": [{"text": "hello"}]}]}


class RedisServer:
    """A real redis-server on 127.0.0.1, no persistence; a missing binary fails loudly."""

    def __init__(self, directory: Path) -> None:
        self._process, self.url = devstack.start_redis(directory)

    def stop(self) -> None:
        devstack.stop(self._process)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def start_proxy(
    tmp: Path,
    pki: Pki,
    emulator: Emulator,
    opa_url: str,
    store: str,
    name: str,
    limits: dict[str, Any] | None = None,
) -> tuple[ProxyHandle, int]:
    directory = tmp / name
    directory.mkdir()
    config = devstack.write_proxy_config(
        directory / "proxy.toml",
        pki=pki.dir,
        opa_url=opa_url,
        emulator=emulator.info,
        audit_log=directory / "audit.log",
        trust_domains={"example.org": pki.ca_bundle},
        opa_timeout_ms=5000,  # a loaded 2-core CI box must not turn load into 503s
        limits_options=limits,
    )
    with config.open("a") as handle:
        handle.write(f'\n[tasks]\nstore = "{store}"\ntimeout_ms = 3000\nsweep_interval_ms = 200\n')
    process, ports = devstack.start_proxy(directory, config, 1)
    port = ports["data_port"]
    return ProxyHandle(
        f"https://127.0.0.1:{port}", port, directory / "audit.log", pki, process
    ), ports["admin_port"]


@pytest.fixture
def proxies(tmp_path: Path, pki: Pki, emulator: Emulator, opa_url: str) -> Iterator[Any]:
    started: list[ProxyHandle] = []

    def start(store: str, limits: dict[str, Any] | None = None) -> tuple[ProxyHandle, int]:
        name = f"proxy{len(started)}"
        handle, admin = start_proxy(tmp_path, pki, emulator, opa_url, store, name, limits)
        started.append(handle)
        return handle, admin

    yield start
    for handle in started:
        devstack.stop(handle.process)


def call_json(
    proxy: ProxyHandle,
    method: str,
    path: str,
    body: Any = None,
    *,
    spiffe_id: str = CHAT,
    headers: dict[str, str] | None = None,
    port: int | None = None,
) -> tuple[int, dict[str, Any]]:
    context = _client_context(proxy.pki, spiffe_id)
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port or proxy.port, context=context, timeout=30
    )
    try:
        data = b"" if body is None else json.dumps(body).encode()
        connection.request(
            method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
        )
        response = connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}
    finally:
        connection.close()


def _client_context(pki: Pki, spiffe_id: str) -> ssl.SSLContext:
    # Issuing an SVID rewrites its files: once per identity, never from two threads.
    with _CERT_LOCK:
        key = f"{pki.dir}|{spiffe_id}"
        if key not in _CONTEXTS:
            cert = pki.svid(spiffe_id, spiffe_id.rsplit("/", 1)[-1] + "-tasks")
            context = ssl.create_default_context(cafile=str(pki.ca_bundle))
            context.load_cert_chain(str(cert.cert), str(cert.key))
            _CONTEXTS[key] = context
        return _CONTEXTS[key]


def open_task(proxy: ProxyHandle, **fields: Any) -> dict[str, Any]:
    body = {"purpose": "summarise ticket", "ttl_seconds": 600, "max_calls": 50, **fields}
    status, document = call_json(proxy, "POST", "/v1/tasks", body)
    assert status == 201, document
    return document


def converse(
    proxy: ProxyHandle, task_id: str | None, model: str = HAIKU, **headers: str
) -> tuple[int, dict[str, Any]]:
    extra = dict(headers)
    if task_id is not None:
        extra["X-Task-Id"] = task_id
    return call_json(proxy, "POST", f"/model/{model}/converse", CONVERSE, headers=extra)


def test_open_use_end_refuses_next_call_and_drops_credentials(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    task = open_task(proxy)
    assert task["task_id"].startswith("task-") and task["state"] == "open"
    assert converse(proxy, task["task_id"])[0] == 200
    first_key = emulator.requests()[-1]["access_key_id"]
    status, seen = call_json(proxy, "GET", f"/v1/tasks/{task['task_id']}")
    assert status == 200 and seen["calls"] == 1 and seen["models_used"] == [HAIKU]

    status, ended = call_json(proxy, "DELETE", f"/v1/tasks/{task['task_id']}")
    assert status == 200 and ended["ended_reason"] == "deleted"
    status, refused = converse(proxy, task["task_id"])
    assert status == 403 and "ended (deleted)" in refused["message"]

    second = open_task(proxy)
    assert converse(proxy, second["task_id"])[0] == 200
    assert emulator.requests()[-1]["access_key_id"] != first_key
    # Every record of a call in a task carries its id, the refused call's too.
    calls = [r for r in proxy.records() if r.get("operation") == "Converse"]
    assert [(r["event"], r["task_id"]) for r in calls[-5:]] == [
        ("authorized", task["task_id"]), ("completed", task["task_id"]),
        ("denied", task["task_id"]),
        ("authorized", second["task_id"]), ("completed", second["task_id"]),
    ]  # fmt: skip
    ended_records = [
        r for r in proxy.records() if r["event"] == "task_ended" and r["task_id"] == task["task_id"]
    ]
    assert [r["reason"] for r in ended_records] == ["deleted"]
    # Task records name the policy revision OPA had loaded, as call records do.
    assert ended_records[0]["policy_revision"].startswith("sha256:")
    wanted = ("task_opened", task["task_id"])
    [opened] = [r for r in proxy.records() if (r["event"], r["task_id"]) == wanted]
    assert opened["policy_revision"] == ended_records[0]["policy_revision"]


def test_ttl_bounds(proxy: ProxyHandle) -> None:
    status, refused = call_json(
        proxy, "POST", "/v1/tasks", {"purpose": "x", "ttl_seconds": 1, "max_calls": 5}
    )
    assert status == 400 and "ttl_seconds" in refused["message"]
    status, refused = call_json(
        proxy, "POST", "/v1/tasks", {"purpose": "x", "ttl_seconds": 7200, "max_calls": 5}
    )
    assert status == 400 and "invalid_ttl" in refused["message"]


def test_max_calls_ends_the_task(proxy: ProxyHandle) -> None:
    task = open_task(proxy, max_calls=2)
    assert converse(proxy, task["task_id"])[0] == 200
    assert converse(proxy, task["task_id"])[0] == 200
    status, refused = converse(proxy, task["task_id"])
    assert status == 403 and "max_calls" in refused["message"]
    reasons = [
        r["reason"]
        for r in proxy.records()
        if r["event"] == "task_ended" and r["task_id"] == task["task_id"]
    ]
    assert reasons == ["max_calls"]


def test_ttl_expiry_ends_the_task_once_across_processes(
    redis_server: RedisServer, proxies: Any, emulator: Emulator
) -> None:
    # The shortest TTL the API accepts is 60 s, so this test waits that long for real.
    a, _ = proxies(redis_server.url)
    b, _ = proxies(redis_server.url)
    task = open_task(a, ttl_seconds=60)
    expires_at = datetime.fromisoformat(task["expires_at"])
    assert converse(b, task["task_id"])[0] == 200
    forwarded = len(emulator.requests())

    time.sleep(max(0.0, (expires_at - datetime.now(UTC)).total_seconds()) + 1.0)
    # The sweepers (every 200 ms) have ended it before any call names it again.
    ended = [
        r
        for proxy in (a, b)
        for r in proxy.records()
        if r["event"] == "task_ended" and r["task_id"] == task["task_id"]
    ]
    assert [r["reason"] for r in ended] == ["expired"]
    for proxy in (a, b):
        status, refused = converse(proxy, task["task_id"])
        assert status == 403 and "ended (expired)" in refused["message"], refused
    assert len(emulator.requests()) == forwarded
    status, seen = call_json(a, "GET", f"/v1/tasks/{task['task_id']}")
    assert status == 200 and seen["state"] == "ended" and seen["ended_reason"] == "expired"


def test_someone_elses_task_is_refused(proxy: ProxyHandle) -> None:
    task = open_task(proxy)
    batch = "spiffe://example.org/ns/demo/sa/batch"
    status, refused = call_json(
        proxy,
        "POST",
        "/model/amazon.titan-text-express-v1/invoke",
        {"inputText": "hi"},
        spiffe_id=batch,
        headers={"X-Task-Id": task["task_id"]},
    )
    assert status == 403 and "not opened by this identity" in refused["message"]
    assert call_json(proxy, "GET", f"/v1/tasks/{task['task_id']}", spiffe_id=batch)[0] == 403
    assert call_json(proxy, "DELETE", f"/v1/tasks/{task['task_id']}", spiffe_id=batch)[0] == 403


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"purpose": "x", "ttl_seconds": 60, "max_calls": 1, "colour": "red"}, "Unknown field"),
        ({"purpose": "x", "ttl_seconds": "60", "max_calls": 1}, "ttl_seconds must be an integer"),
        ({"purpose": "x", "ttl_seconds": 60.0, "max_calls": 1}, "ttl_seconds must be an integer"),
        ({"purpose": "x" * 300, "ttl_seconds": 60, "max_calls": 1}, "purpose is 300 characters"),
    ],
)
def test_bad_task_bodies_are_400(proxy: ProxyHandle, body: dict[str, Any], needle: str) -> None:
    status, refused = call_json(proxy, "POST", "/v1/tasks", body)
    assert status == 400 and needle in refused["message"]


def test_concurrent_calls_on_a_fresh_task_assume_the_role_once(
    proxies: Any, emulator: Emulator
) -> None:
    # 200 calls at once on one task: over the default per-task and per-identity
    # rates and concurrency, which are not what this test is about.
    unlimited = {
        f"{what}_per_{whom}": 1000
        for what in ("requests_per_second", "burst", "concurrent_requests")
        for whom in ("identity", "task")
    }
    proxy, _ = proxies("memory", unlimited)
    task = open_task(proxy, max_calls=500)
    before = len(emulator.sts_calls())
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(lambda _: converse(proxy, task["task_id"])[0], range(200)))
    assert statuses == [200] * 200
    assert len(emulator.sts_calls()) - before == 1
    assert call_json(proxy, "GET", f"/v1/tasks/{task['task_id']}")[1]["calls"] == 200


def test_taint_across_a_chain_of_calls(
    tmp_path: Path, pki: Pki, emulator: Emulator, start_opa: Any, proxies: Any
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    data_path = policies / "bedrock" / "data.json"
    data = json.loads(data_path.read_text())
    data["workloads"][CHAT]["max_classification"] = "restricted"
    data_path.write_text(json.dumps(data))
    _, opa = start_opa(policies)
    proxy, _ = start_proxy(tmp_path, pki, emulator, opa, "memory", "taint")
    try:
        task = open_task(proxy, classification="restricted")["task_id"]
        assert converse(proxy, task, HAIKU)[0] == 200
        assert converse(proxy, task, SONNET, **{"X-Data-Classification": "restricted"})[0] == 200
        status, refused = converse(proxy, task, HAIKU)
        assert status == 403 and "task_tainted" in refused["message"]
        assert converse(proxy, task, SONNET)[0] == 200
    finally:
        devstack.stop(proxy.process)


def test_two_processes_share_tasks_and_revocations(
    redis_server: RedisServer, proxies: Any, emulator: Emulator
) -> None:
    a, admin_a = proxies(redis_server.url)
    b, _ = proxies(redis_server.url)
    task = open_task(a)["task_id"]
    assert converse(b, task)[0] == 200
    status, _ = call_json(a, "POST", f"/admin/tasks/{task}/revoke", spiffe_id=CHAT, port=admin_a)
    assert status == 403
    status, listed = call_json(a, "GET", "/admin/tasks", spiffe_id=ADMIN, port=admin_a)
    assert status == 200 and task in [t["task_id"] for t in listed["tasks"]]
    revoked_at = time.monotonic()
    status, revoked = call_json(
        a, "POST", f"/admin/tasks/{task}/revoke", spiffe_id=ADMIN, port=admin_a
    )
    assert status == 200 and revoked["ended_reason"] == "revoked"
    status, refused = converse(b, task)
    assert status == 403 and "revoked" in refused["message"]
    assert time.monotonic() - revoked_at < 1.0
    [ended] = [r for r in a.records() if r["event"] == "task_ended" and r["task_id"] == task]
    assert (ended["reason"], ended["ended_by"]) == ("revoked", ADMIN)


def test_counters_exact_across_two_processes(redis_server: RedisServer, proxies: Any) -> None:
    a, _ = proxies(redis_server.url)
    b, _ = proxies(redis_server.url)
    task = open_task(a, max_calls=40)["task_id"]
    targets = [a, b] * 30
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda p: converse(p, task)[0], targets))
    assert statuses.count(200) == 40, statuses
    assert statuses.count(403) == 20, statuses
    status, seen = call_json(a, "GET", f"/v1/tasks/{task}")
    assert seen["calls"] == 40 and seen["ended_reason"] == "max_calls"


def test_redis_down_fails_closed_with_audit(redis_server: RedisServer, proxies: Any) -> None:
    a, _ = proxies(redis_server.url)
    task = open_task(a)["task_id"]
    redis_server.stop()
    status, refused = converse(a, task)
    assert status == 503 and "Task state is unavailable" in refused["message"]
    record = [r for r in a.records() if r.get("task_id") == task and r["event"] == "denied"][-1]
    assert (
        record["outcome"] == "state_unavailable" and record["error"]["code"] == "state_unavailable"
    )
