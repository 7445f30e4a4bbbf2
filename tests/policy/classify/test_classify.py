"""proxy.policy.classify: the declared level can raise, never lower, the effective level."""

from __future__ import annotations

import pytest
from aiohttp import web

from proxy.errors import InvalidRequest
from proxy.policy.classify.classifier import Classification, classify
from proxy.policy.classify.rules import LEVELS, PolicyRules
from proxy.policy.opa import OpaClient
from tests.policy.conftest import refused_url, serve


@pytest.mark.parametrize(
    ("header", "declared"),
    [
        ("public", "public"),
        ("internal", "internal"),
        ("confidential", "confidential"),
        ("restricted", "restricted"),
        (None, "internal"),  # unlabelled calls count as internal data
    ],
)
def test_declared_levels(header: str | None, declared: str) -> None:
    result = classify(header, b'{"messages": []}')
    assert result == Classification(declared, "public", declared, ())
    assert result.to_opa() == {
        "declared": declared,
        "detected": "public",
        "effective": declared,
        "findings": [],
    }


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Public",
        "RESTRICTED",
        " internal",
        "internal ",
        "secret",
        "public,restricted",
        "internal\r\nX-Evil: 1",
        "x" * 1000,
    ],
)
def test_bad_declared_level_is_invalid(header: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        classify(header, b"")
    assert info.value.status == 400
    assert "X-Data-Classification" in info.value.message
    # The echo of the caller's value is bounded.
    assert len(info.value.message) < 200


@pytest.mark.parametrize("header", [*LEVELS, None])
@pytest.mark.parametrize(
    "body", [b"", b"{}", b"my card is 4111 1111 1111 1111, ssn 078-05-1120", b"\xff\x00"]
)
def test_effective_never_below_declared(header: str | None, body: bytes) -> None:
    result = classify(header, body)
    assert LEVELS.index(result.effective) >= LEVELS.index(result.declared)
    assert LEVELS.index(result.effective) >= LEVELS.index(result.detected)
    assert result.effective in (result.declared, result.detected)


# --- detectors: true and false positives ----------------------------------------

import base64  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import proxy.policy.classify.classifier  # noqa: E402
from proxy.offload import OFFLOAD_BYTES  # noqa: E402
from proxy.policy.classify.classifier import Classifier  # noqa: E402
from proxy.policy.classify.detectors import scan_text  # noqa: E402
from proxy.policy.classify.redaction import redacted_capture  # noqa: E402
from proxy.policy.classify.rules import (  # noqa: E402
    BUILTIN_RULES,
    ClassificationRules,
    rules_from_policy,
)
from proxy.policy.classify.scan import scan_body  # noqa: E402

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT_VALUE = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA7\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("write to john.doe+x@mail.example.co.uk today", "email", "john.doe+x@mail.example.co.uk"),
        ("call +44 20 7946 0958 now", "phone", "+44 20 7946 0958"),
        ("call (415) 555-2671 now", "phone", "(415) 555-2671"),
        ("ssn 078-05-1120.", "us_ssn", "078-05-1120"),
        ("card 4111 1111 1111 1111 exp", "payment_card", "4111 1111 1111 1111"),
        ("card 4111111111111111", "payment_card", "4111111111111111"),
        ("amex 3782-822463-10005", "payment_card", "3782-822463-10005"),
        ("iban DE89 3704 0044 0532 0130 00", "iban", "DE89 3704 0044 0532 0130 00"),
        ("iban GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
        ("id AKIAIOSFODNN7EXAMPLE,", "aws_access_key_id", "AKIAIOSFODNN7EXAMPLE"),
        (f"key={AWS_SECRET}\n", "aws_secret_key", AWS_SECRET),
        (f"here:\n{PEM}\nend", "private_key", PEM),
        (f"Bearer {JWT_VALUE}", "jwt", JWT_VALUE),
        ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a", "high_entropy_token",
         "ghp_16C7e42F292c6912E7710c838347Ae178B4a"),
        ("x-api-key: sk-proj-4f8Hq2LmN9xR7tY3vB6kP1sZ0wC5dE", "high_entropy_token",
         "sk-proj-4f8Hq2LmN9xR7tY3vB6kP1sZ0wC5dE"),
    ],
)  # fmt: skip
def test_detector_true_positives(text: str, kind: str, value: str) -> None:
    [span] = scan_text(text)
    assert (span.kind, text[span.start : span.end]) == (kind, value)


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112",  # 16 digits failing Luhn
        "order 1234567890123456",  # Luhn fails
        "grouped oddly 4111 11 1111 1111 11",  # Luhn passes, not how cards are written
        "bad iban DE89 3704 0044 0532 0130 01",  # mod-97 fails
        "short iban DE89 3704 0044 0532",  # wrong length for DE
        "ssn 000-12-3456 and 666-12-3456 and 900-12-3456",  # never issued
        "date 2024-01-15 at 12:30, version 1.2.3.4, pi 3.14159",
        "user@localhost and a@b",  # no domain with a TLD
        "git 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12",  # hex hash
        "uuid 123e4567-e89b-12d3-a456-426614174000",
        "getUserProfileById2024WithExtraStuff",  # CamelCase identifier
        "internationalization_and_localization_settings",
        "https://example.com/api/v1/users/12345/profile",
        "AKIAIOSFODNN7EXAMPLEX",  # too long for an access key id
        "eyJub3RhIjoiand0In0.eyJzdWIiOiIxIn0.sig",  # header without alg
        "-----BEGIN PUBLIC KEY-----",
        "phone 12345",
    ],
)
def test_detector_false_positives(text: str) -> None:
    assert scan_text(text) == []


def _converse(*blocks: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": list(blocks)}], **extra}).encode()


IMAGE = {
    "image": {"format": "png", "source": {"bytes": base64.b64encode(b"\x89PNG" * 10).decode()}}
}


@pytest.mark.parametrize(
    ("operation", "body", "kinds"),
    [
        ("Converse", _converse({"text": "hello"}), ()),
        ("Converse", _converse({"text": "mail a@example.org"}), ("email",)),
        ("Converse", _converse({"text": "hi"}, system=[{"text": f"key {AWS_SECRET}"}]),
         ("aws_secret_key",)),
        ("ConverseStream", _converse({"toolResult": {"toolUseId": "t1", "content": [
            {"json": {"rows": [{"ssn": "078-05-1120"}]}}]}}), ("us_ssn",)),
        ("Converse", _converse({"toolUse": {"toolUseId": "t", "name": "n",
                                            "input": {"card": "4111111111111111"}}}),
         ("payment_card",)),
        ("Converse", json.dumps({"promptVariables": {"who": {"text": "AKIAIOSFODNN7EXAMPLE"}}})
         .encode(), ("aws_access_key_id",)),
        ("Converse", _converse(IMAGE), ("binary_content",)),
        ("Converse", _converse({"document": {"format": "pdf", "name": "d", "source": {
            "s3Location": {"uri": "s3://b/k"}}}}), ("binary_content",)),
        ("InvokeModel", json.dumps({"anthropic_version": "x", "max_tokens": 5, "messages": [
            {"role": "user", "content": [{"type": "text", "text": PEM},
                                         {"type": "image", "source": {"type": "base64",
                                          "media_type": "image/png", "data": "iVBORw0K"}}]}]})
         .encode(), ("binary_content", "private_key")),
        ("InvokeModel", json.dumps({"inputText": f"token {JWT_VALUE}"}).encode(), ("jwt",)),
        ("InvokeModel", json.dumps({"prompt": "x", "extra": {"deep": [[["a@example.org"]]]}})
         .encode(), ("email",)),
        ("InvokeModel", b"plain text prompt with 078-05-1120", ("us_ssn",)),
        ("InvokeModel", b"\x89PNG\r\n\x1a\n\x00\x00\xff", ("binary_content",)),
        ("InvokeModel", json.dumps({"blob": "QUJD" * 400}).encode(), ("binary_content",)),
        ("CountTokens", json.dumps({"input": {"invokeModel": {"body": base64.b64encode(
            json.dumps({"prompt": f"secret {AWS_SECRET}"}).encode()).decode()}}}).encode(),
         ("aws_secret_key",)),
        ("CountTokens", json.dumps({"input": {"converse": {"messages": [{"role": "user",
            "content": [{"text": "DE89 3704 0044 0532 0130 00"}]}]}}}).encode(), ("iban",)),
        ("Converse", json.dumps({"a@example.org": "keys are scanned too"}).encode(), ("email",)),
        ("Converse", b'{"messages": [{"content": [{"text": "a\\u0040example.org"}]}]}',
         ("email",)),
    ],
)  # fmt: skip
def test_every_body_shape_is_walked(operation: str, body: bytes, kinds: tuple[str, ...]) -> None:
    assert scan_body(body, operation=operation, deadline=float("inf")) == kinds


def test_budget_exhausted_reports_scan_incomplete() -> None:
    ticks = iter(range(100))
    body = _converse({"text": "a"}, {"text": "b"})
    kinds = scan_body(body, operation="Converse", deadline=0.5, clock=lambda: next(ticks))
    assert kinds == ("scan_incomplete",)
    result = classify("public", body, budget_s=-1)
    assert result.effective == "restricted"


def test_downgrade_attempt_is_raised() -> None:
    result = classify("public", _converse({"text": f"use {AWS_SECRET}"}))
    assert result == Classification("public", "restricted", "restricted", ("aws_secret_key",))
    assert AWS_SECRET not in json.dumps(result.to_opa())


def test_rules_from_policy_and_workload_default() -> None:
    rules = rules_from_policy(
        {
            "levels": {"email": "restricted"},
            "workload_defaults": {"spiffe://td/w": "confidential"},
            "default_declared": "public",
        }
    )
    body = _converse({"text": "a@example.org"})
    assert classify(None, body, rules=rules, spiffe_id="spiffe://td/w").declared == "confidential"
    assert classify(None, b"{}", rules=rules, spiffe_id="spiffe://td/x").declared == "public"
    assert classify("public", body, rules=rules).detected == "restricted"
    # A kind the map does not name counts as restricted.
    assert classify("public", _converse(IMAGE), rules=rules).detected == "restricted"
    assert BUILTIN_RULES.level_of("binary_content") == "confidential"


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"levels": {"email": "secret"}},
        {"levels": []},
        {"workload_defaults": {"w": 3}},
        {"default_declared": "none"},
    ],
)
def test_malformed_rules_are_refused(document: object) -> None:
    with pytest.raises(ValueError):
        rules_from_policy(document)


async def test_classifier_scans_large_bodies_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[int] = []

    def recording(*args: Any, **kwargs: Any) -> Classification:
        threads.append(threading.get_ident())
        return classify(*args, **kwargs)

    monkeypatch.setattr(proxy.policy.classify.classifier, "classify", recording)
    classifier = Classifier(None)
    small = _converse({"text": "x" * 20})
    large = _converse({"text": f"{'x ' * OFFLOAD_BYTES} {AWS_SECRET}"})
    assert await classifier.classify(
        None, small, operation="Converse", spiffe_id="spiffe://td/w"
    ) == Classification("internal", "public", "internal", ())
    found = await classifier.classify(
        "public", large, operation="Converse", spiffe_id="spiffe://td/w"
    )
    assert found.findings == ("aws_secret_key",)
    assert threads[0] == threading.get_ident()
    assert threads[1] != threading.get_ident()
    assert isinstance(ClassificationRules().levels, type(BUILTIN_RULES.levels))


# --- PolicyRules: read from OPA through the shared client, last good copy kept ------

CLASSIFICATION_PATH = "/v1/data/bedrock/classification"
POLICY_DOCUMENT = {"levels": {"email": "restricted"}, "default_declared": "public"}


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
        assert (await rules.current()).declared_default(None) == "public"
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


# --- redaction -------------------------------------------------------------------

SECRETS = [
    "a@example.org",
    "078-05-1120",
    "4111 1111 1111 1111",
    "DE89 3704 0044 0532 0130 00",
    "AKIAIOSFODNN7EXAMPLE",
    AWS_SECRET,
    JWT_VALUE,
    "MIIEpAIBAAKCAQEA7",
    "+44 20 7946 0958",
]


@pytest.mark.parametrize("operation", ["Converse", "InvokeModel", "CountTokens"])
def test_redacted_capture_contains_no_matched_value(operation: str) -> None:
    text = "; ".join([*SECRETS[:6], JWT_VALUE, PEM, SECRETS[8]])
    inner = json.dumps({"prompt": text, "image": {"type": "base64", "data": "iVBORw0KGgo="}})
    body = {
        "Converse": _converse({"text": text}, IMAGE, system=[{"text": "ok " + SECRETS[0]}]),
        "InvokeModel": inner.encode(),
        "CountTokens": json.dumps(
            {"input": {"invokeModel": {"body": base64.b64encode(inner.encode()).decode()}}}
        ).encode(),
    }[operation]
    captured = redacted_capture(body, operation)
    for secret in SECRETS:
        assert secret not in captured
    for kind in ("[email]", "[us_ssn]", "[payment_card]", "[iban]", "[aws_secret_key]",
                 "[aws_access_key_id]", "[jwt]", "[private_key]", "[phone]",
                 "[binary_content]"):  # fmt: skip
        assert kind in captured
    assert "; " in captured  # the rest of the prompt is kept


@pytest.mark.parametrize(
    ("body", "captured"),
    [
        (b"plain a@example.org", "plain [email]"),
        (b"\xff\xfe\x00", "[binary_content]"),
        (b'{"a\\u0040example.org": "x"}', '{"[email]":"x"}'),
        (b"[" * 5000 + b"]" * 5000, "[" * 5000 + "]" * 5000),
    ],
)
def test_redacted_capture_edge_cases(body: bytes, captured: str) -> None:
    result = redacted_capture(body, "InvokeModel")
    assert result == captured or result == "[unredactable]"
