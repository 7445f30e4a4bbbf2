"""Hostile and heavy clients cannot starve anyone, through the real proxy.

Each limit and deadline of ``[connections]`` (and the upstream pool's) is set
small here, hit with raw sockets on 127.0.0.1, and must: cut or refuse the
connection, count it in ``bedrock_proxy_connections_cut_total`` by reason,
leave a ``connection`` audit record (at most ``connection_records_per_minute``
of each reason), and leave the proxy serving a well-behaved client meanwhile.
Every socket has a 5 s timeout: a deadline that does not fire fails the test
instead of hanging it.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import botocore.exceptions
import pytest

from tests.conftest import CHAT, HAIKU, Emulator, ProxyFactory, ProxyHandle, wait_for
from tests.e2e.test_metrics import sample, scrape

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]
PATH = f"/model/{quote(HAIKU, safe='')}/converse"
BODY = json.dumps({"messages": MESSAGES}).encode()
HEAD = f"POST {PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n".encode()
DEADLINES = {
    "handshake_timeout_ms": 500,
    "header_timeout_ms": 500,
    "body_idle_timeout_ms": 500,
    "max_headers": 16,
    "max_header_line_bytes": 1024,
}


@pytest.fixture(scope="module")
def strict(proxy_factory: ProxyFactory, opa_url: str) -> ProxyHandle:
    """Half-second deadlines; one connection record per reason a minute."""
    return proxy_factory(
        opa_url,
        connections_options=DEADLINES,
        audit_options={"connection_records_per_minute": 1},
    )


def tls_socket(proxy: ProxyHandle, source: str = "127.0.0.1") -> ssl.SSLSocket:
    """A finished mTLS handshake with a valid SVID, from ``source``; nothing sent yet."""
    pair = proxy.pki.svid(CHAT, "raw-client")
    context = ssl.create_default_context(cafile=str(proxy.pki.ca_bundle))
    context.load_cert_chain(str(pair.cert), str(pair.key))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=5, source_address=(source, 0))
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def until_closed(sock: socket.socket) -> bytes:
    """What the proxy sends until it closes the connection (a reset counts as closed);
    a socket timeout (5 s) means it never did, and fails the test."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    return answer


def answered(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def legit_call(proxy: ProxyHandle) -> str:
    """A well-behaved call on a fresh connection; its request id."""
    proxy.close_clients()
    answer = proxy.client().converse(modelId=HAIKU, messages=MESSAGES)
    assert answer["output"]
    request_id: str = answer["ResponseMetadata"]["RequestId"]
    return request_id


def cuts(proxy: ProxyHandle, reason: str) -> float:
    return sample(scrape(proxy), "bedrock_proxy_connections_cut_total", reason=reason)


def connection_records(proxy: ProxyHandle, reason: str) -> list[dict[str, Any]]:
    return [
        r for r in proxy.all_records() if r["event"] == "connection" and r.get("reason") == reason
    ]


@pytest.fixture
def stalled(strict: ProxyHandle) -> Iterator[list[ssl.SSLSocket]]:
    """Sockets a test leaves stalled; closed at the end whatever happened."""
    held: list[ssl.SSLSocket] = []
    yield held
    for sock in held:
        sock.close()


def test_half_the_headers_are_cut_at_the_header_deadline(
    strict: ProxyHandle, emulator: Emulator, stalled: list[ssl.SSLSocket]
) -> None:
    before = cuts(strict, "header_timeout")
    for _ in range(3):
        sock = tls_socket(strict)
        stalled.append(sock)
        sock.sendall(HEAD)  # and never the blank line that ends the head
    served = legit_call(strict)  # while three connections stall
    for sock in stalled:
        assert until_closed(sock) == b"", "cut without an answer: there is no request"
    assert cuts(strict, "header_timeout") == before + 3
    # Rate-limited: one record of this reason a minute; the metric counts them all.
    [record] = connection_records(strict, "header_timeout")
    assert record["peer"].startswith("127.0.0.1:")
    assert strict.request_of(served)[-1]["outcome"] == "ok"


def test_a_connection_that_sends_nothing_after_its_handshake_is_cut(strict: ProxyHandle) -> None:
    before = cuts(strict, "header_timeout")
    with tls_socket(strict) as sock:
        assert until_closed(sock) == b""
    assert cuts(strict, "header_timeout") == before + 1


def test_a_stalled_body_is_answered_408_and_audited(
    strict: ProxyHandle, emulator: Emulator
) -> None:
    before = cuts(strict, "body_idle_timeout")
    with tls_socket(strict) as sock:
        sock.sendall(HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        legit_call(strict)  # while the body stalls
        status, headers, body = answered(until_closed(sock))
    assert (status, headers["x-amzn-errortype"]) == (408, "RequestTimeoutException")
    assert headers["connection"] == "close"
    assert "stopped arriving" in body["message"]
    [record] = strict.request_of(headers["x-amzn-requestid"])
    assert (record["event"], record["outcome"]) == ("denied", "client_timeout")
    assert record["error"]["code"] == "request_timeout"
    assert record["spiffe_id"] == CHAT and record["operation"] == "Converse"
    assert cuts(strict, "body_idle_timeout") == before + 1
    assert connection_records(strict, "body_idle_timeout")
    assert len(emulator.requests()) == 1, "only the legitimate call went upstream"
    text = scrape(strict)
    assert sample(text, "bedrock_proxy_requests_total", outcome="client_timeout") >= 1


def test_a_broken_chunk_mid_body_is_refused_at_once(
    strict: ProxyHandle, emulator: Emulator
) -> None:
    with tls_socket(strict) as sock:
        sock.sendall(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % 10 + BODY[:10])
        time.sleep(0.2)  # the handler is reading the body now
        sock.sendall(b"\r\nzz\r\nnot a chunk\r\n")
        status, headers, body = answered(until_closed(sock))
    assert (status, headers["x-amzn-errortype"]) == (400, "ValidationException")
    assert "body framing" in body["message"]
    [record] = strict.request_of(headers["x-amzn-requestid"])
    assert (record["outcome"], record["error"]["code"]) == ("invalid_request", "malformed_http")
    assert record["error"]["detail"].startswith("body_framing")
    assert emulator.requests() == []


def test_a_silent_tls_client_is_cut_at_the_handshake_deadline(strict: ProxyHandle) -> None:
    before = cuts(strict, "handshake_timeout")
    with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as raw:
        legit_call(strict)  # while the handshake hangs
        assert until_closed(raw) == b""
    wait_for(lambda: cuts(strict, "handshake_timeout") == before + 1, timeout=5)
    assert connection_records(strict, "handshake_timeout")


def test_the_configured_header_count_and_line_size_are_the_parsers(strict: ProxyHandle) -> None:
    many = b"".join(b"X-Extra-%d: v\r\n" % i for i in range(20))
    long_line = b"X-Long: " + b"a" * 1100 + b"\r\n"
    for extra, words in ((many, "more than 16 headers"), (long_line, "longer than 1024 bytes")):
        with tls_socket(strict) as sock:
            sock.sendall(HEAD + extra + b"Content-Length: 0\r\n\r\n")
            status, _, body = answered(until_closed(sock))
        assert status == 400 and words in body["message"]


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_connections": 2, "max_connections_per_peer": 2}, "max_connections"),
        ({"max_connections": 50, "max_connections_per_peer": 2}, "max_connections_per_peer"),
    ],
)
def test_past_a_connection_count_new_connections_are_refused_at_accept(
    proxy_factory: ProxyFactory, opa_url: str, limits: dict[str, int], reason: str
) -> None:
    proxy = proxy_factory(opa_url, connections_options=limits)
    held = [tls_socket(proxy) for _ in range(2)]
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as refused:
            assert until_closed(refused) == b"", "closed before any TLS"
        # The admin listener counts its own connections: still reachable.
        assert cuts(proxy, reason) == 1
        assert sample(scrape(proxy), "bedrock_proxy_connections_open", listener="data") == 2
        [record] = connection_records(proxy, reason)
        assert record["peer"].startswith("127.0.0.1:")
        if reason == "max_connections_per_peer":
            # Another address is still served while this one is at its count.
            with tls_socket(proxy, source="127.0.0.2") as other:
                other.sendall(_converse_request())
                assert other.recv(65536).startswith(b"HTTP/1.1 200 ")
    finally:
        for sock in held:
            sock.close()
    # Their places come back as they close.
    wait_for(lambda: _served(proxy), timeout=5)


def _converse_request() -> bytes:
    return HEAD + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY


def _served(proxy: ProxyHandle) -> bool:
    try:
        legit_call(proxy)
    except botocore.exceptions.BotoCoreError:
        return False
    return True


def test_an_idle_keepalive_connection_is_closed(proxy_factory: ProxyFactory, opa_url: str) -> None:
    proxy = proxy_factory(opa_url, connections_options={"keepalive_timeout_ms": 300})
    with tls_socket(proxy) as sock:
        sock.sendall(b"GET /v1/tasks/none HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 ")
        assert until_closed(sock) == b"", "closed by the proxy once idle"


def test_a_full_upstream_pool_answers_503_after_the_connect_timeout(
    proxy_factory: ProxyFactory, opa_url: str, emulator: Emulator
) -> None:
    proxy = proxy_factory(
        opa_url,
        upstream_options={
            "max_connections": 1,
            "max_connections_per_host": 1,
            "connect_timeout_ms": 300,
        },
    )
    emulator.fault("slow", delay_ms=3000)  # the first call holds the only connection
    slow = proxy.client()
    outcome: list[str] = []
    holder = threading.Thread(
        target=lambda: outcome.append(slow.converse(modelId=HAIKU, messages=MESSAGES)["stopReason"])
    )
    holder.start()
    try:
        wait_for(lambda: len(emulator.requests()) == 1, timeout=5)
        other = proxy.client(cert=proxy.pki.svid(CHAT, "second-client"))
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            other.converse(modelId=HAIKU, messages=MESSAGES)
        error = refused.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert error["Error"]["Code"] == "ServiceUnavailableException"
        assert holder.is_alive(), "refused while the first call still held the pool"
    finally:
        holder.join(10)
    assert outcome == ["end_turn"]
    [record] = [r for r in proxy.records() if r.get("outcome") == "overloaded"]
    assert (record["event"], record["error"]["detail"]) == ("completed", "upstream_connections")
    assert len(emulator.requests()) == 1, "the refused call never reached Bedrock"
    legit_call(proxy)  # the place came back
