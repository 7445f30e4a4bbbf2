"""No answer names the server software: aiohttp's ``Server: Python/3.x aiohttp/3.x``
would tell anyone which known bugs to try."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.conftest import CHAT, HAIKU, ProxyHandle

MODEL = quote(HAIKU, safe="")
CONVERSE = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
ADMIN = "spiffe://example.org/ns/platform/sa/admin"

# case -> (listener, identity, method, path, body, status)
ANSWERS: dict[str, tuple[str, str, str, str, bytes, int]] = {
    "data plane success": ("data", CHAT, "POST", f"/model/{MODEL}/converse", CONVERSE, 200),
    "streamed success": ("data", CHAT, "POST", f"/model/{MODEL}/converse-stream", CONVERSE, 200),
    "data plane error": ("data", CHAT, "POST", f"/model/{MODEL}/summon", CONVERSE, 404),
    "task API refusal": ("data", CHAT, "POST", "/v1/tasks", b"{}", 400),
    "admin success": ("admin", ADMIN, "GET", "/healthz", b"", 200),
    "admin refusal": ("admin", CHAT, "GET", "/metrics", b"", 403),
}


@pytest.mark.parametrize("case", sorted(ANSWERS))
def test_no_answer_names_the_server_software(proxy: ProxyHandle, case: str) -> None:
    listener, identity, method, path, body, status = ANSWERS[case]
    cert = proxy.pki.svid(identity, identity.rsplit("/", 1)[-1] + "-server-header")
    port = proxy.admin_port if listener == "admin" else proxy.port
    got, headers, _ = proxy.raw(
        method, path, body=body, headers={"Content-Type": "application/json"}, cert=cert, port=port
    )
    assert got == status
    assert "server" not in {name.lower() for name in headers}, headers


def test_a_parser_refusal_names_no_server_software(proxy: ProxyHandle) -> None:
    # aiohttp runs no on_response_prepare for these (aiohttp#6463): checked on its own.
    answer = proxy.wire(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    assert head.startswith("http/1.0 400 ")
    assert "\r\nserver:" not in head, head
