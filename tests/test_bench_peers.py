"""bench/peers.py: the pure parts (configs, requests, the Portkey patch) and process hygiene.

Installing and driving the real peers takes minutes and the network, so it
belongs to ``make bench``, not here; these tests pin what makes those runs
correct: session tokens reach both peers, every endpoint stays on loopback,
the signing patch touches exactly one token, and a stopped peer leaves no
process behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.credentials import Credentials

from bench import peers

CREDS = peers.AwsCredentials("ASIAEXAMPLE", "secret/with+chars", "token==")
EMULATOR = "http://127.0.0.1:40001"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("http://127.0.0.1:1234", True),
        ("http://localhost:80/", True),
        ("http://[::1]:9", True),
        ("http://10.0.0.1:1234", False),
        ("https://bedrock-runtime.us-east-1.amazonaws.com", False),
        ("http://127.0.0.1.nip.io:1", False),
    ],
)
def test_require_loopback(url: str, ok: bool) -> None:
    if ok:
        assert peers.require_loopback(url) == url.rstrip("/")
    else:
        with pytest.raises(peers.PeerError, match="non-loopback"):
            peers.require_loopback(url)


@pytest.mark.parametrize(
    "value",
    [
        CREDS,
        {
            "AccessKeyId": "ASIAEXAMPLE",
            "SecretAccessKey": "secret/with+chars",
            "SessionToken": "token==",
        },
        Credentials("ASIAEXAMPLE", "secret/with+chars", "token=="),
    ],
)
def test_as_credentials_accepts_the_shapes_the_harness_has(value: object) -> None:
    assert peers.as_credentials(value) == CREDS


@pytest.mark.parametrize("value", [Credentials("AKID", "secret"), object(), "ASIA"])
def test_as_credentials_refuses_without_a_session_token(value: object) -> None:
    with pytest.raises(peers.PeerError, match="session token"):
        peers.as_credentials(value)


def test_litellm_config_carries_the_session_token_and_the_emulator() -> None:
    doc = json.loads(peers.litellm_config(EMULATOR + "/", CREDS))  # JSON is the YAML we write
    params = doc["model_list"][0]["litellm_params"]
    assert params == {
        "model": f"bedrock/converse/{peers.MODEL}",
        "aws_bedrock_runtime_endpoint": EMULATOR,
        "aws_access_key_id": "ASIAEXAMPLE",
        "aws_secret_access_key": "secret/with+chars",
        "aws_session_token": "token==",
        "aws_region_name": "us-east-1",
    }
    assert doc["model_list"][0]["model_name"] == peers.MODEL
    assert doc["general_settings"]["master_key"] == peers.LITELLM_MASTER_KEY


def test_litellm_config_refuses_a_remote_endpoint() -> None:
    with pytest.raises(peers.PeerError):
        peers.litellm_config("https://bedrock-runtime.us-east-1.amazonaws.com", CREDS)


@pytest.mark.parametrize(
    ("spec", "path", "must_have"),
    [
        (
            peers.litellm_request("http://127.0.0.1:5"),
            "http://127.0.0.1:5/chat/completions",
            {"Authorization": f"Bearer {peers.LITELLM_MASTER_KEY}"},
        ),
        (
            peers.portkey_request("http://127.0.0.1:6", EMULATOR, CREDS),
            "http://127.0.0.1:6/v1/chat/completions",
            {
                "x-portkey-provider": "bedrock",
                "x-portkey-aws-access-key-id": "ASIAEXAMPLE",
                "x-portkey-aws-secret-access-key": "secret/with+chars",
                "x-portkey-aws-session-token": "token==",
                "x-portkey-aws-region": "us-east-1",
                "x-portkey-custom-host": EMULATOR,
            },
        ),
    ],
)
def test_request_specs(spec: peers.RequestSpec, path: str, must_have: dict[str, str]) -> None:
    method, url, headers, body = spec
    assert (method, url) == ("POST", path)
    assert must_have.items() <= headers.items()
    assert headers["Content-Type"] == "application/json"
    doc = json.loads(body)
    assert doc["model"] == peers.MODEL
    assert doc["messages"][0]["role"] == "user"


GUARDRAIL = "u=new URL(a),m=u.hostname;let f;t.host=m,e&&(f=JSON.stringify(e));"
SIGNER = "u=new URL(a),m=u.hostname;let f;t.host=m,e?e instanceof Uint8Array"


def test_portkey_patch_fixes_only_the_bedrock_signer() -> None:
    patched = peers.patch_portkey_signing(GUARDRAIL + SIGNER)
    assert patched == GUARDRAIL + SIGNER.replace("t.host=m,", "t.host=u.host,")


@pytest.mark.parametrize("source", [GUARDRAIL, SIGNER + SIGNER, ""])
def test_portkey_patch_refuses_an_unknown_build(source: str) -> None:
    with pytest.raises(peers.PeerError, match="anchor found"):
        peers.patch_portkey_signing(source)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b'{"choices":[{"message":{"content":"hi"}}]}', "hi"),
        (b'{"choices":[{"message":{"content":null}}]}', ""),
        (b'{"choices":[]}', ""),
        (b'{"error":{"message":"bedrock error"}}', ""),
        (b"not json", ""),
        (b"[1]", ""),
    ],
)
def test_completion_text(raw: bytes, text: str) -> None:
    assert peers.completion_text(raw) == text


def test_peer_env_drops_egress_proxies_and_ambient_aws_credentials() -> None:
    env = peers.peer_env(
        {
            "PATH": "/bin",
            "HTTPS_PROXY": "http://proxy:3128",
            "http_proxy": "http://proxy:3128",
            "AWS_ACCESS_KEY_ID": "AKIDAMBIENT",
            "AWS_PROFILE": "prod",
        }
    )
    assert env["PATH"] == "/bin"
    assert not {"HTTPS_PROXY", "http_proxy", "AWS_ACCESS_KEY_ID", "AWS_PROFILE"} & env.keys()
    assert env["NO_PROXY"] == "127.0.0.1,localhost"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


NODE = shutil.which("node")
LISTEN = (
    "const s=require('http').createServer();"
    "s.listen(0,()=>{console.log(JSON.stringify(s.address()));s.close();});"
)


def test_loopback_preload_binds_hostless_listeners_to_127_0_0_1(tmp_path: Path) -> None:
    assert NODE is not None, "node is required by the Portkey peer"
    preload = tmp_path / "bind-loopback.cjs"
    preload.write_text(peers._LOOPBACK_PRELOAD_SOURCE)
    done = subprocess.run(
        [NODE, "--require", str(preload), "-e", LISTEN],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(done.stdout)["address"] == "127.0.0.1"


def _alive(pid: int) -> bool:
    """Running and not a zombie (whether init reaps orphans promptly varies by container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_stop_ends_the_peer_and_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    handle = peers.PeerHandle(
        "fake", "http://127.0.0.1:1", process.pid, (), tmp_path / "log",
        peers.litellm_request("http://127.0.0.1:1"), process,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "fake peer never started its child"
        time.sleep(0.02)
    child = int(pid_file.read_text())
    handle.stop()
    assert process.returncode is not None
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)  # the orphan is reaped by init, not by us
    assert not _alive(child)
    assert handle.request_spec()[2] is not handle.spec[2]  # callers get their own headers
