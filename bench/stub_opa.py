"""A stub decision server: always the allow decision the real policy gives the bench caller.

Used only to isolate OPA's cost: same endpoint (``POST /v1/data/...``), same
JSON shape as ``data.bedrock.authz.decision`` for the chat workload,
obligations included, so the proxy does exactly the same work on the answer.
Never used outside the benchmark; binds loopback only.

``python -m bench.stub_opa --port-file F`` writes its port to F once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

from aiohttp import web

DECISION = {
    "decision_id": "bench-stub",
    "result": {
        "allow": True,
        "reasons": [],
        "owner": "team-demo",
        "obligations": {
            "role_arn": "arn:aws:iam::123456789012:role/bedrock-runtime-demo",
            "session_seconds": 900,
            "audit_capture": "hash",
        },
    },
}
_BODY = json.dumps(DECISION).encode()
# The declared level of a call without X-Data-Classification, as the shipped policy answers.
_DECLARED_DEFAULT = json.dumps({"result": "internal"}).encode()


async def _decide(request: web.Request) -> web.Response:
    await request.read()
    body = _DECLARED_DEFAULT if request.path.endswith("/declared_default") else _BODY
    return web.Response(body=body, content_type="application/json")


async def _health(request: web.Request) -> web.Response:
    return web.json_response({})


async def _serve(port_file: Path) -> None:
    app = web.Application()
    app.router.add_post("/v1/data/{tail:.*}", _decide)
    app.router.add_get("/health", _health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = int(runner.addresses[0][1])
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
    tmp.replace(port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stub_opa")
    parser.add_argument("--port-file", type=Path, required=True)
    asyncio.run(_serve(parser.parse_args().port_file))


if __name__ == "__main__":
    main()
