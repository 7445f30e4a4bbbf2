"""proxy.dataplane.pipeline: work that grows with the body leaves the loop for large bodies.

The data app runs in this process (real OPA, the emulator's STS and
bedrock-runtime, real mTLS) so the test can see where each stage was sent.
"""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web

from proxy.app import DATA_PLANE, build_data_app
from proxy.config import load_settings
from proxy.identity.svid import TrustBundles, server_ssl_context
from proxy.offload import OFFLOAD_BYTES, Offload
from proxy_dev import devstack
from tests.conftest import CHAT, HAIKU, PROJECT_ROOT, Emulator, Pki

OBLIGATIONS_POLICY = PROJECT_ROOT / "tests" / "fixtures" / "policies_obligations"
# Every stage whose work grows with the body, and where it must run for a large one.
STAGES = {"read_body": "process", "edit_body": "process", "sign_request": "thread"}


def _converse(size: int) -> bytes:
    """A Converse body of many small text blocks, ``size`` bytes or a little more."""
    block = {"text": "the quarterly report says revenue grew and customers asked"}
    count = max(1, size // len(json.dumps(block)))
    return json.dumps({"messages": [{"role": "user", "content": [block] * count}]}).encode()


def record_offloads(offload: Offload, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Where the data plane sent each body-sized stage: inline, thread or process."""
    seen: dict[str, str] = {}

    def recording(pool: str, run: Any) -> Any:
        def record(size: int, *args: Any, **kwargs: Any) -> Any:
            work = args[1] if pool == "process" else args[0]
            seen[work.__name__] = pool if size > OFFLOAD_BYTES else "inline"
            return run(size, *args, **kwargs)

        return record

    monkeypatch.setattr(offload, "in_process", recording("process", offload.in_process))
    monkeypatch.setattr(offload, "if_large", recording("thread", offload.if_large))
    return seen


# app.py keys the request context with a str; aiohttp warns, and warnings are errors here.
@pytest.mark.parametrize(("size", "inline"), [(100, True), (OFFLOAD_BYTES + 1, False)])
async def test_body_sized_stages_run_inline_when_small_and_off_the_loop_when_large(
    size: int,
    inline: bool,
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
    where = record_offloads(runner.app[DATA_PLANE].offload, monkeypatch)
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
    # The obligations' edits were made wherever the body was edited.
    sent = json.loads(base64.b64decode(seen["body_b64"]))
    assert sent["guardrailConfig"]["guardrailIdentifier"] == "strict01"
    assert sent["inferenceConfig"]["maxTokens"] == 64
    assert sent["messages"] == json.loads(body)["messages"]
    assert (len(body) > OFFLOAD_BYTES) is not inline
    assert where == {name: "inline" if inline else pool for name, pool in STAGES.items()}
