"""CLI: ``python -m proxy_dev.emulator`` (wired as ``bedrock-proxy emulator``).

Serves until SIGINT/SIGTERM. Once both listeners are bound it writes the
ready file atomically (temporary file, then rename), so a harness polling for
it never reads half a document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from proxy_dev.emulator import start_emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bedrock-proxy emulator", description="Local bedrock-runtime + STS emulator"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sts-port", type=int, default=0)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--frame-delay-ms", type=int, default=20)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument(
        "--tls-cert", type=Path, default=None, help="also serve bedrock over TLS (PEM chain)"
    )
    parser.add_argument("--tls-key", type=Path, default=None, help="key of --tls-cert (PEM)")
    parser.add_argument("--tls-port", type=int, default=0)
    return parser


def write_ready_file(path: Path, document: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _serve(args: argparse.Namespace) -> None:
    emulator = await start_emulator(
        host=args.host,
        port=args.port,
        sts_port=args.sts_port,
        frame_delay_s=args.frame_delay_ms / 1000,
        frames=args.frames,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_port=args.tls_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        document = {
            "bedrock_url": emulator.bedrock_url,
            "sts_url": emulator.sts_url,
            "pid": os.getpid(),
        }
        if emulator.bedrock_tls_url is not None:
            document["bedrock_tls_url"] = emulator.bedrock_tls_url
        if args.ready_file is not None:
            write_ready_file(args.ready_file, document)
        print(json.dumps(document), flush=True)
        await stop.wait()
    finally:
        await emulator.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    if args.frames < 1 or args.frame_delay_ms < 0:
        print("--frames must be >= 1 and --frame-delay-ms >= 0", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("--tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
