"""Every rule of the policy pack through the real proxy: one allowed and at least
one denied call each, with the reason code the security team documented."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import POLICIES, Emulator, Pki, ProxyFactory, ProxyHandle

TD = "spiffe://example.org"
CHAT = f"{TD}/ns/demo/sa/chat"
BATCH = f"{TD}/ns/demo/sa/batch"
AGENT = f"{TD}/ns/agents/planner"
EU = f"{TD}/ns/eu/sa/support"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"
TITAN = "amazon.titan-text-express-v1"


@dataclass(frozen=True)
class Call:
    identity: str
    model: str = HAIKU
    operation: str = "converse"
    region: str | None = None
    classification: str | None = None
    tools: tuple[str, ...] = ()
    body: dict = field(default_factory=dict)

    def send(self, proxy: ProxyHandle, pki: Pki) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"}
        if self.region:
            headers["Host"] = f"bedrock-runtime.{self.region}.amazonaws.com"
        if self.classification:
            headers["X-Data-Classification"] = self.classification
        body = dict(self.body) or {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
        if self.tools:
            body["toolConfig"] = {
                "tools": [
                    {"toolSpec": {"name": t, "inputSchema": {"json": {}}}} for t in self.tools
                ]
            }
        if self.operation == "async-invoke":
            path = "/async-invoke"
        elif self.operation == "invoke":
            path = f"/model/{quote(self.model, safe='')}/invoke"
            body = {"inputText": "hi"}
        else:
            path = f"/model/{quote(self.model, safe='')}/{self.operation}"
        cert = pki.svid(
            self.identity,
            "policy-"
            + self.identity.rsplit("/", 2)[-2:][0]
            + "-"
            + self.identity.rsplit("/", 1)[-1],
        )
        return proxy.raw("POST", path, body=json.dumps(body).encode(), headers=headers, cert=cert)


def async_body(bucket: str, owner: str = "123456789012") -> dict:
    return {
        "modelId": HAIKU,
        "modelInput": {"messages": []},
        "outputDataConfig": {
            "s3OutputDataConfig": {"s3Uri": f"s3://{bucket}/runs/", "bucketOwner": owner}
        },
    }


OTHER_ACCOUNT_PROFILE = f"arn:aws:bedrock:us-east-1:999999999999:inference-profile/us.{SONNET}"

# rule -> (allowed call, [(denied call, reason code)])
RULES: dict[str, tuple[Call, list[tuple[Call, str]]]] = {
    "registry-exact-id": (
        Call(CHAT),
        [
            (Call(f"{TD}/ns/demo/sa/unknown"), "workload_not_registered"),
            (Call(f"{TD}/ns/demo/sa/chat-evil"), "workload_not_registered"),
        ],
    ),
    "registry-whole-segments": (
        Call(AGENT),
        [(Call(f"{TD}/ns/agents-evil/planner"), "workload_not_registered")],
    ),
    "provable-ownership": (
        Call(CHAT),
        [(Call(f"{TD}/ns/demo/sa/orphan", model=TITAN, operation="invoke"), "owner_missing")],
    ),
    "model-allowlist": (
        Call(CHAT, model=SONNET),
        [(Call(CHAT, model="meta.llama3-70b-instruct-v1:0"), "model_not_allowed")],
    ),
    "version-pattern": (
        Call(AGENT, model="anthropic.claude-3-haiku-20991231-v9:0"),
        [(Call(AGENT, model=SONNET), "model_not_allowed")],
    ),
    "region-allowlist": (
        Call(CHAT, region="us-west-2"),
        [
            (Call(CHAT, region="eu-west-1"), "region_not_allowed"),
            # A model ARN names its own region, which must be allowed too.
            (
                Call(CHAT, model=f"arn:aws:bedrock:eu-west-1::foundation-model/{HAIKU}"),
                "region_not_allowed",
            ),
        ],
    ),
    "account-boundary": (
        Call(CHAT, model=f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{SONNET}"),
        [(Call(CHAT, model=OTHER_ACCOUNT_PROFILE), "account_not_allowed")],
    ),
    "geo-profile-ceiling": (
        Call(CHAT, model=f"global.{SONNET}"),
        [
            (
                Call(CHAT, model=f"global.{SONNET}", classification="confidential"),
                "geo_classification_too_high",
            )
        ],
    ),
    "geo-not-allowed": (
        Call(CHAT, model=f"us.{SONNET}"),
        [(Call(CHAT, model=f"apac.{SONNET}"), "geo_not_allowed")],
    ),
    "eu-residency": (
        Call(EU, region="eu-central-1", model=f"eu.{HAIKU}"),
        [
            (Call(EU, region="eu-central-1", model=f"us.{HAIKU}"), "residency_violation"),
            (Call(EU, region="us-east-1", model=HAIKU), "residency_violation"),
        ],
    ),
    "workload-classification-ceiling": (
        Call(CHAT, classification="confidential"),
        [(Call(CHAT, model=SONNET, classification="restricted"), "classification_too_high")],
    ),
    "model-classification-ceiling": (
        Call(CHAT, model=TITAN, classification="internal"),
        [(Call(CHAT, model=TITAN, classification="confidential"), "model_classification_too_high")],
    ),
    "admin-never-invokes": (
        Call(CHAT),
        [(Call(f"{TD}/ns/platform/sa/admin"), "admin_identity_on_runtime")],
    ),
    "operation-allowlist": (
        Call(BATCH, model=TITAN, operation="invoke"),
        [(Call(BATCH, model=TITAN), "operation_not_allowed")],
    ),
    "tool-allowlist": (
        Call(CHAT, tools=("lookup",)),
        [(Call(CHAT, tools=("lookup", "shell_exec")), "tool_not_allowed")],
    ),
    "async-output-bucket": (
        Call(CHAT, operation="async-invoke", body=async_body("demo-bedrock-output")),
        [
            (
                Call(CHAT, operation="async-invoke", body=async_body("exfil-bucket")),
                "async_output_not_allowed",
            ),
            (
                Call(
                    CHAT,
                    operation="async-invoke",
                    body=async_body("demo-bedrock-output", owner="999999999999"),
                ),
                "async_output_not_allowed",
            ),
        ],
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_allows_and_denies_with_its_code(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki, rule: str
) -> None:
    allowed, denied = RULES[rule]
    status, headers, raw = allowed.send(proxy, pki)
    assert status == 200, raw
    for call, code in denied:
        before = len(emulator.requests())
        status, headers, raw = call.send(proxy, pki)
        assert status == 403, raw
        assert headers["x-amzn-ErrorType"] == "AccessDeniedException"
        message = json.loads(raw)["message"]
        assert f"{code}:" in message
        assert len(emulator.requests()) == before, "a denied call never reaches Bedrock"
        [record] = proxy.request_of(headers["x-amzn-RequestId"])
        assert any(r.startswith(code) for r in record["decision"]["reasons"])
        assert record["policy_revision"].startswith("sha256:")


def test_role_is_chosen_per_target_account(
    proxy: ProxyHandle, emulator: Emulator, pki: Pki
) -> None:
    profile = f"arn:aws:bedrock:eu-central-1:210987654321:inference-profile/eu.{HAIKU}"
    status, _, raw = Call(EU, region="eu-central-1", model=profile).send(proxy, pki)
    assert status == 200, raw
    [seen] = emulator.requests()
    [call] = [c for c in emulator.sts_calls() if c["access_key_id"] == seen["access_key_id"]]
    assert call["role_arn"] == "arn:aws:iam::210987654321:role/bedrock-runtime-eu"


def test_policy_edit_is_picked_up_live_without_failed_requests(
    proxy_factory: ProxyFactory, start_opa: Any, emulator: Emulator, pki: Pki, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    _, opa_url = start_opa(policies)
    # OPA answers queries only after a reload compiles; on this shared 2-core
    # machine that can take longer than the default 500 ms budget.
    proxy = proxy_factory(
        opa_url,
        opa_timeout_ms=5000,
        # Calls back to back for up to 30 s: above the default identity rate.
        limits_options={"requests_per_second_per_identity": 1000.0, "burst_per_identity": 1000},
    )
    call = Call(CHAT, model=SONNET)
    statuses: list[int] = []
    edited_at = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(statuses) < 400:
        status, _, raw = call.send(proxy, pki)
        assert status in (200, 403), raw
        if status == 403:
            assert "model_not_allowed:" in json.loads(raw)["message"]
        statuses.append(status)
        if edited_at is None and len(statuses) == 5:
            data_file = policies / "bedrock" / "data.json"
            data = json.loads(data_file.read_text())
            data["workloads"][CHAT]["models"].remove(SONNET)
            data_file.write_text(json.dumps(data))
            edited_at = len(statuses)
        revisions = [r["policy_revision"] for r in proxy.records() if r["event"] == "denied"]
        if statuses[-3:] == [403, 403, 403] and revisions and revisions[-1] != revisions[0]:
            break
    assert statuses[:5] == [200] * 5
    assert statuses[-3:] == [403, 403, 403], "the edit took effect while requests flowed"
    assert statuses == sorted(statuses), "once denied, never allowed again"
    before = {r["policy_revision"] for r in proxy.records() if r["event"] == "completed"}
    after = [r["policy_revision"] for r in proxy.records() if r["event"] == "denied"]
    assert len(before) == 1 and after[-1] not in before, "records name the policy that decided"
