"""proxy.policy.classify.rules: policy data read from OPA, the last good copy kept."""

from __future__ import annotations

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from proxy.policy.classify.classifier import classify
from proxy.policy.classify.rules import (
    BUILTIN_RULES,
    PolicyRules,
    rules_from_policy,
)
from proxy.policy.opa import OpaClient
from tests.policy.classify.samples import IMAGE, converse_body
from tests.policy.conftest import refused_url, serve


def test_rules_from_policy() -> None:
    rules = rules_from_policy({"levels": {"email": "restricted"}})
    body = converse_body({"text": "a@example.org"})
    assert classify("public", body, rules=rules).detected == "restricted"
    # A kind the map does not name counts as restricted.
    assert classify("public", converse_body(IMAGE), rules=rules).detected == "restricted"
    assert BUILTIN_RULES.level_of("binary_content") == "confidential"


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"levels": {"email": "secret"}},
        {"levels": []},
        {"levels": {"email": 3}},
    ],
)
def test_malformed_rules_are_refused(document: object) -> None:
    with pytest.raises(ValueError):
        rules_from_policy(document)


CLASSIFICATION_PATH = "/v1/data/bedrock/classification"
POLICY_DOCUMENT = {"levels": {"email": "restricted"}}


class RulesOpa:
    """A stand-in OPA publishing (or not) ``data.bedrock.classification``."""

    def __init__(self) -> None:
        self.answer: object = {"result": POLICY_DOCUMENT}
        self.status = 200
        self.asked = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.asked += 1
        if isinstance(self.answer, bytes):
            return web.Response(body=self.answer, status=self.status)
        return web.json_response(self.answer, status=self.status)


async def test_policy_rules_are_read_from_opa_and_cached_for_the_ttl() -> None:
    opa_side, now = RulesOpa(), [0.0]
    async with (
        serve({("GET", CLASSIFICATION_PATH): opa_side.handle}) as url,
        OpaClient(url, timeout_s=2.0) as opa,
    ):
        rules = PolicyRules(opa, ttl_s=30.0, clock=lambda: now[0])
        await rules.start()
        assert (await rules.current()).level_of("email") == "restricted"
        assert opa_side.asked == 1
        opa_side.answer = {}  # the policy no longer publishes the document: built-in map
        now[0] = 31.0
        assert await rules.current() == BUILTIN_RULES
        assert opa_side.asked == 2


@pytest.mark.parametrize("failure", ["status", "malformed", "not-json"])
async def test_policy_rules_keep_the_last_good_copy_and_retry_at_the_next_ttl(
    failure: str,
) -> None:
    opa_side, now = RulesOpa(), [0.0]
    async with (
        serve({("GET", CLASSIFICATION_PATH): opa_side.handle}) as url,
        OpaClient(url, timeout_s=2.0) as opa,
    ):
        rules = PolicyRules(opa, ttl_s=30.0, clock=lambda: now[0])
        await rules.start()
        good = await rules.current()
        if failure == "status":
            opa_side.status = 500
        elif failure == "malformed":
            opa_side.answer = {"result": {"levels": {"email": "secret"}}}
        else:
            opa_side.answer = b"<html>proxy error</html>"
        now[0] = 31.0
        for _ in range(3):
            assert await rules.current() == good
        # A failure is not retried per request, only at the next TTL.
        assert opa_side.asked == 2
        opa_side.status, opa_side.answer = 200, {"result": {"levels": {"email": "public"}}}
        now[0] = 62.0
        assert (await rules.current()).level_of("email") == "public"


async def test_policy_rules_start_on_builtins_when_opa_is_unreachable() -> None:
    async with OpaClient(refused_url(), timeout_s=2.0) as opa:
        rules = PolicyRules(opa)
        await rules.start()
        assert await rules.current() == BUILTIN_RULES


async def test_defaults_in_the_document_are_not_read_and_say_so() -> None:
    # Earlier proxies read workload defaults here by exact SPIFFE ID only, so
    # "/*" registrations lost theirs; a policy still publishing them is told.
    opa_side = RulesOpa()
    opa_side.answer = {
        "result": {
            "levels": {"email": "restricted"},
            "workload_defaults": {"spiffe://td/w": "confidential"},
            "default_declared": "public",
        }
    }
    async with (
        serve({("GET", CLASSIFICATION_PATH): opa_side.handle}) as url,
        OpaClient(url, timeout_s=2.0) as opa,
    ):
        rules = PolicyRules(opa)
        with capture_logs() as logs:
            await rules.start()
        assert await rules.current() == rules_from_policy({"levels": {"email": "restricted"}})
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["keys"] == ["default_declared", "workload_defaults"]
    assert "declared_default" in warning["event"]
