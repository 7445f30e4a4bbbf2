"""``make demo``: the local stack, real SDK calls through it, then the audit trail.

Starts ``bedrock-proxy dev up``, issues an SVID for a registered workload,
and makes unmodified boto3 calls with only ``endpoint_url`` and a client
certificate changed (no AWS credentials in the app): an allowed InvokeModel,
a Converse, a ConverseStream read as it streams, a call denied by policy, a
call without a registered identity; then stops the stack and shows what the
SOC sees: ``audit tail`` and ``audit verify`` of the signed chain.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError

from proxy_dev import devca

WORKLOAD = "spiffe://example.org/ns/demo/sa/chat"
UNREGISTERED = "spiffe://example.org/ns/demo/sa/stranger"
MODEL = "anthropic.claude-3-haiku-20240307-v1:0"


def bedrock_client(stack: dict, directory: Path, spiffe_id: str, name: str):  # type: ignore[no-untyped-def]
    cert, key = devca.issue_svid(directory, spiffe_id, name)
    return boto3.client(
        "bedrock-runtime",
        region_name=stack["region"],
        endpoint_url=stack["proxy_url"],
        verify=stack["ca_bundle"],
        config=Config(
            signature_version=UNSIGNED,
            client_cert=(str(cert), str(key)),
            retries={"max_attempts": 1},
        ),
    )


def wait_for_stack(path: Path, process: subprocess.Popen[bytes]) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists():
            loaded: dict = json.loads(path.read_text())
            return loaded
        if process.poll() is not None:
            raise SystemExit(f"dev up exited with code {process.returncode}")
        time.sleep(0.1)
    raise SystemExit("the dev stack did not come up within 120s")


def run_calls(stack: dict, directory: Path) -> None:
    chat = bedrock_client(stack, directory, WORKLOAD, "demo-chat")
    body = json.dumps(
        {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello"}],
        }
    )
    answer = json.loads(chat.invoke_model(modelId=MODEL, body=body)["body"].read())
    print(f"[allowed]  InvokeModel {MODEL}: {answer['content'][0]['text']!r}")

    reply = chat.converse(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "Hello"}]}]
    )
    print(f"[allowed]  Converse: stop={reply['stopReason']} usage={reply['usage']}")

    print("[streamed] ConverseStream: ", end="", flush=True)
    stream = chat.converse_stream(
        modelId=MODEL, messages=[{"role": "user", "content": [{"text": "Stream please"}]}]
    )
    for event in stream["stream"]:
        if "contentBlockDelta" in event:
            print(event["contentBlockDelta"]["delta"].get("text", ""), end="", flush=True)
        if "metadata" in event:
            print(f"  (usage {event['metadata']['usage']})")

    for label, client, model in (
        ("denied ", chat, "meta.llama3-70b-instruct-v1:0"),
        ("denied ", bedrock_client(stack, directory, UNREGISTERED, "demo-stranger"), MODEL),
    ):
        try:
            client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "x"}]}])
            print(f"[{label}] UNEXPECTED: call was allowed")
        except ClientError as error:
            print(
                f"[{label}] {error.response['Error']['Code']}: {error.response['Error']['Message']}"
            )


def print_audit(stack: dict) -> None:
    """What the SOC reads, with the project's own tools: the table, then the chain check."""
    log = stack["audit_log"]
    print("\nAudit trail (bedrock-proxy audit tail):", flush=True)
    subprocess.run([sys.executable, "-m", "proxy", "audit", "tail", log], check=False)
    print("\nIntegrity (bedrock-proxy audit verify --public-key ...):", flush=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "proxy",
            "audit",
            "verify",
            "--public-key",
            stack["audit_public_key"],
            log,
        ],
        check=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy_dev.demo")
    parser.add_argument("--dir", type=Path, default=Path("demo-stack"))
    args = parser.parse_args(argv)
    directory = args.dir.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "audit.log").unlink(missing_ok=True)
    (directory / "stack.json").unlink(missing_ok=True)
    up = subprocess.Popen(
        [sys.executable, "-m", "proxy", "dev", "up", "--dir", str(directory)],
        stdout=subprocess.DEVNULL,
    )
    try:
        stack = wait_for_stack(directory / "stack.json", up)
        print(
            f"stack up: proxy {stack['proxy_url']}, OPA {stack['opa_url']}, "
            f"emulator {stack['emulator_url']}\n"
        )
        run_calls(stack, directory)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
    # After the stop: the proxy has sealed the chain with a signed checkpoint.
    print_audit(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
