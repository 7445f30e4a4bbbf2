"""proxy.dataplane.pipeline: work that grows with the body leaves the loop for large bodies.

The data app runs in this process (real OPA, the emulator's STS and
bedrock-runtime, real mTLS) so the test can see which thread each stage ran in.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

import proxy.policy.classify.classifier
from proxy.app import build_data_app
from proxy.config import load_settings
from proxy.dataplane import pipeline
from proxy.errors import InvalidRequest
from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.offload import OFFLOAD_BYTES
from proxy.request.operations import parse_route
from proxy_dev import devstack
from tests.conftest import CHAT, HAIKU, PROJECT_ROOT, Emulator, Pki

OBLIGATIONS_POLICY = PROJECT_ROOT / "tests" / "fixtures" / "policies_obligations"
STAGES = [
    (pipeline, "read_document"),
    (pipeline, "declared_tools"),
    (proxy.policy.classify.classifier, "classify"),
    (pipeline, "_sha256"),
    (pipeline, "apply_obligations"),
    (pipeline, "prompt_capture"),
    (pipeline, "sign_request"),
]


def _converse(size: int) -> bytes:
    """A Converse body of many small text blocks, ``size`` bytes or a little more."""
    block = {"text": "the quarterly report says revenue grew and customers asked"}
    count = max(1, size // len(json.dumps(block)))
    return json.dumps({"messages": [{"role": "user", "content": [block] * count}]}).encode()


@pytest.fixture
def threads_of_stages(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    seen: dict[str, list[int]] = defaultdict(list)

    def recording(name: str, stage: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen[name].append(threading.get_ident())
            return stage(*args, **kwargs)

        return run

    for module, name in STAGES:
        monkeypatch.setattr(module, name, recording(name, getattr(module, name)))
    return seen


# app.py keys the request context with a str; aiohttp warns, and warnings are errors here.
@pytest.mark.parametrize(("size", "inline"), [(100, True), (OFFLOAD_BYTES + 1, False)])
async def test_body_sized_stages_run_inline_when_small_and_in_a_thread_when_large(
    size: int,
    inline: bool,
    threads_of_stages: dict[str, list[int]],
    pki: Pki,
    emulator: Emulator,
    start_opa: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proxy's own AWS credentials, as the dev stack gives its proxy process.
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for key, value in devstack.proxy_environment().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    # A policy with obligations that edit the body, so none of the stages is a no-op.
    _, opa_url = start_opa(OBLIGATIONS_POLICY)
    settings = load_settings(
        devstack.write_proxy_config(
            tmp_path / "proxy.toml",
            pki=pki.dir,
            opa_url=opa_url,
            emulator=emulator.info,
            audit_log=tmp_path / "audit.log",
        )
    )
    server_tls = server_ssl_context(
        settings.server_cert, settings.server_key, TrustBundles.load(settings.trust_bundles)
    )
    client_tls = ssl.create_default_context(cafile=str(pki.ca_bundle))
    svid = pki.svid(CHAT, "pipeline-client")
    client_tls.load_cert_chain(str(svid.cert), str(svid.key))
    runner = web.AppRunner(build_data_app(settings))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_tls)
        await site.start()
        port = runner.addresses[0][1]
        body = _converse(size)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"https://127.0.0.1:{port}/model/{quote(HAIKU, safe='')}/converse",
                data=body,
                headers={"Content-Type": "application/json"},
                ssl=client_tls,
            ) as response,
        ):
            status = response.status
            answer = await response.read()
    finally:
        await runner.cleanup()

    assert status == 200, answer
    [seen] = emulator.requests()
    assert seen["verified"]  # signed correctly wherever it was signed
    assert (len(body) > OFFLOAD_BYTES) is not inline
    loop_thread = threading.get_ident()
    assert {name: len(threads) for name, threads in threads_of_stages.items()} == {
        name: 1 for _, name in STAGES
    }
    on_loop = {name: threads == [loop_thread] for name, threads in threads_of_stages.items()}
    assert on_loop == {name: inline for _, name in STAGES}


CONVERSE = parse_route("POST", f"/model/{quote(HAIKU, safe='')}/converse")
ASYNC = parse_route("POST", "/async-invoke")
S3 = "s3://bucket/out/"


@pytest.mark.parametrize(
    ("headers", "config", "expected"),
    [
        ({}, None, None),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": "1"}, ("g1", "1")),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": 2}, ("g1", "2")),
        (
            {},
            {"guardrailIdentifier": "g" * 2048, "guardrailVersion": "DRAFT"},
            ("g" * 2048, "DRAFT"),
        ),
        ({"x-amzn-bedrock-guardrailidentifier": "h1"}, None, ("h1", "")),
        # Longer than Bedrock accepts, or a version of any other type: refused, not copied.
        ({}, {"guardrailIdentifier": "g" * 2049, "guardrailVersion": "1"}, 400),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": "1" * 9}, 400),
        ({}, {"guardrailIdentifier": "g1", "guardrailVersion": ["1"] * 1_000_000}, 400),
        ({"x-amzn-bedrock-guardrailidentifier": "h" * 8000}, None, 400),
    ],
)
def test_the_requested_guardrail_is_bounded(
    headers: dict[str, str], config: dict[str, Any] | None, expected: Any
) -> None:
    document = None if config is None else {"guardrailConfig": config}
    if expected == 400:
        with pytest.raises(InvalidRequest) as refused:
            pipeline._requested_guardrail(CONVERSE, headers, document)
        assert len(refused.value.message) < 200
        return
    guardrail = pipeline._requested_guardrail(CONVERSE, headers, document)
    found = (guardrail.identifier, guardrail.version) if guardrail else None
    assert found == expected


@pytest.mark.parametrize(
    ("s3", "expected"),
    [
        ({"s3Uri": S3}, (S3, None)),
        ({"s3Uri": S3, "bucketOwner": "123456789012"}, (S3, "123456789012")),
        ({"s3Uri": "s3://b/" + "k" * 1017}, ("s3://b/" + "k" * 1017, None)),
        ({"s3Uri": "s3://b/" + "k" * 1018}, 400),
        ({"s3Uri": S3, "bucketOwner": "1" * 13}, 400),
        ({"s3Uri": "s3://b/" + "k" * 5_000_000}, 400),
    ],
)
def test_the_async_output_location_is_bounded(s3: dict[str, Any], expected: Any) -> None:
    document = {"modelId": HAIKU, "outputDataConfig": {"s3OutputDataConfig": s3}}
    if expected == 400:
        with pytest.raises(InvalidRequest) as refused:
            pipeline._async_output(ASYNC, document)
        assert len(refused.value.message) < 200
        return
    output = pipeline._async_output(ASYNC, document)
    assert output is not None and (output.s3_uri, output.bucket_owner) == expected
