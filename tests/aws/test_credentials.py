"""Tests for proxy/credentials.py: pure naming/policy tables, then the broker against moto's STS."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import pytest
from moto.server import ThreadedMotoServer
from moto.sts.models import sts_backends

from proxy.aws.credentials import (
    MAX_TAGS,
    NAME_MAX_CHARS,
    POLICY_MAX_CHARS,
    CredentialBroker,
    CredentialScope,
    SessionCredentials,
    assume_role_params,
    duration_seconds,
    make_sts_client,
    role_session_name,
    session_policy,
    session_tags,
    source_identity,
)
from proxy.errors import ConfigError, CredentialsUnavailable
from proxy_dev import devstack

ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/bedrock-task"
MODEL_ARN = "arn:aws:bedrock:eu-central-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"
AWS_NAME = re.compile(r"^[A-Za-z0-9_+=,.@-]{2,64}$")
# \p{L}\p{Z}\p{N} approximated by \w\s, enough for the test data.
TAG_TEXT = re.compile(r"^[\w\s.:/=+\-@]*$")


def make_scope(**overrides: Any) -> CredentialScope:
    fields: dict[str, Any] = {
        "role_arn": ROLE_ARN,
        "spiffe_id": "spiffe://example.org/ns/prod/sa/api",
        "trust_domain": "example.org",
        "workload_path": "/ns/prod/sa/api",
        "task_id": "task-1",
        "region": "eu-central-1",
        "resource_arns": (MODEL_ARN,),
        "actions": ("bedrock:InvokeModel",),
        "classification": "internal",
        "session_seconds": 1800,
    }
    fields.update(overrides)
    return CredentialScope(**fields)


# --- names -----------------------------------------------------------------

LONG_PREFIX = "spiffe://example.org/" + "/".join(["segment"] * 12)


@pytest.mark.parametrize(
    ("spiffe_id", "expected"),
    [
        ("spiffe://example.org/ns/prod/sa/api", "example.org@ns@prod@sa@api"),
        ("spiffe://example.org", "example.org"),
        ("spiffe://td/a.b_c-D9", "td@a.b_c-D9"),
        # Exactly 64 after mapping: still verbatim.
        ("spiffe://example.org/" + "x" * 52, "example.org@" + "x" * 52),
    ],
)
def test_names_are_verbatim_when_exact_and_fitting(spiffe_id: str, expected: str) -> None:
    assert role_session_name(spiffe_id) == expected
    assert source_identity(spiffe_id) == expected


@pytest.mark.parametrize(
    "spiffe_id",
    [
        "spiffe://a",  # one char: below the minimum of 2
        "spiffe://example.org/" + "x" * 53,  # 65 after mapping
        LONG_PREFIX + "/alpha",
        "spiffe://example.org/ns/caf\u00e9",  # non-ASCII
        "spiffe://example.org/a@b",  # "@" is the path separator: lossy
        "spiffe://example.org/a=b",
        "example.org/ns/prod",  # not a spiffe:// ID
        "",
    ],
)
def test_names_get_a_hash_when_lossy_short_or_long(spiffe_id: str) -> None:
    for name in (role_session_name(spiffe_id), source_identity(spiffe_id)):
        assert AWS_NAME.match(name), name
        assert re.search(r"=[0-9a-f]{16}$", name), name
        assert not name.lower().startswith("aws:")
    assert role_session_name(spiffe_id) == role_session_name(spiffe_id)  # deterministic


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # Long IDs sharing a prefix longer than the limit.
        (LONG_PREFIX + "/alpha", LONG_PREFIX + "/beta"),
        (LONG_PREFIX + "/a", LONG_PREFIX + "/b"),
        # Lossy mappings that produce the same sanitized text.
        ("spiffe://example.org/ns/a@b", "spiffe://example.org/ns/a=b"),
        ("spiffe://example.org/ns/a@b", "spiffe://example.org/ns/a/b"),
        ("spiffe://example.org/caf\u00e9", "spiffe://example.org/caf\u00e8"),
        ("example.org/ns", "spiffe://example.org/ns"),
        # A verbatim name that looks like a hashed one.
        ("spiffe://a", "spiffe://a=" + "0" * 16),
    ],
)
def test_names_never_collide(first: str, second: str) -> None:
    assert role_session_name(first) != role_session_name(second)
    assert source_identity(first) != source_identity(second)


def test_long_name_keeps_a_readable_head() -> None:
    name = role_session_name(LONG_PREFIX + "/alpha")
    assert len(name) == NAME_MAX_CHARS
    assert name.startswith("example.org@segment@segment@")


# --- tags, policy, duration ------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {},
            {
                "trust-domain": "example.org",
                "workload": "/ns/prod/sa/api",
                "task": "task-1",
                "classification": "internal",
            },
        ),
        ({"task_id": None}, {"task": "none"}),
        ({"workload_path": ""}, {"workload": ""}),
    ],
)
def test_session_tags(overrides: dict[str, Any], expected: dict[str, str]) -> None:
    tags = session_tags(make_scope(**overrides))
    as_dict = {t["Key"]: t["Value"] for t in tags}
    assert len(tags) <= MAX_TAGS
    assert expected.items() <= as_dict.items()
    assert all(set(t) == {"Key", "Value"} for t in tags)


@pytest.mark.parametrize(
    "value", ["/ns/<script>", "/ns/a;b", "x" * 300, "/ns/\u00e9t\u00e9\x00", "/ns/a*b"]
)
def test_session_tag_values_are_sanitized(value: str) -> None:
    tags = session_tags(make_scope(workload_path=value))
    workload = next(t["Value"] for t in tags if t["Key"] == "workload")
    assert len(workload) <= 256
    assert TAG_TEXT.match(workload), workload
    assert workload != value
    # Distinct inputs stay distinct after sanitizing.
    other = next(
        t["Value"]
        for t in session_tags(make_scope(workload_path=value + "!"))
        if t["Key"] == "workload"
    )
    assert other != workload


def test_session_policy_is_exact_and_compact() -> None:
    scope = make_scope(
        resource_arns=(MODEL_ARN, MODEL_ARN, "arn:aws:bedrock:eu-central-1::foundation-model/b"),
        actions=("bedrock:InvokeModelWithResponseStream", "bedrock:InvokeModel"),
    )
    text = session_policy(scope)
    assert " " not in text and "\n" not in text
    assert json.loads(text) == {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["bedrock:InvokeModel", "bedrock:InvokeModelWithResponseStream"],
                "Resource": [MODEL_ARN, "arn:aws:bedrock:eu-central-1::foundation-model/b"],
                "Condition": {"StringEquals": {"aws:RequestedRegion": "eu-central-1"}},
            }
        ],
    }


PROFILE_US = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.vendor.m-v1:0"
PROFILE_GLOBAL = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/global.vendor.m-v1:0"


@pytest.mark.parametrize(
    ("profile", "routed", "routed_condition"),
    [
        (PROFILE_US, "arn:aws:bedrock:*::foundation-model/vendor.m-v1:0",
         {"bedrock:InferenceProfileArn": [PROFILE_US]}),
        (PROFILE_GLOBAL, "arn:aws:bedrock:::foundation-model/vendor.m-v1:0",
         {"aws:RequestedRegion": "unspecified", "bedrock:InferenceProfileArn": [PROFILE_GLOBAL]}),
    ],
    ids=["geo", "global"],
)  # fmt: skip
def test_profile_models_are_allowed_only_through_the_profile(
    profile: str, routed: str, routed_condition: dict[str, Any]
) -> None:
    statements = json.loads(
        session_policy(make_scope(region="us-east-1", resource_arns=(profile, routed)))
    )["Statement"]
    assert [(s["Resource"], s["Condition"]["StringEquals"]) for s in statements] == [
        ([profile], {"aws:RequestedRegion": "us-east-1"}),
        ([routed], routed_condition),
    ]


@pytest.mark.parametrize(
    "routed",
    ["arn:aws:bedrock:*::foundation-model/vendor.m-v1:0",
     "arn:aws:bedrock:::foundation-model/vendor.m-v1:0"],
)  # fmt: skip
def test_profile_models_without_their_profile_are_refused(routed: str) -> None:
    with pytest.raises(CredentialsUnavailable) as info:
        session_policy(make_scope(resource_arns=(MODEL_ARN, routed)))
    assert info.value.detail is not None and "without their profile" in info.value.detail


def test_scope_order_does_not_change_the_key() -> None:
    a = make_scope(resource_arns=("b", "a", "a"), actions=("y", "x"))
    b = make_scope(resource_arns=("a", "b"), actions=("x", "y"))
    assert a == b and hash(a) == hash(b)


def _arns(count: int) -> tuple[str, ...]:
    return tuple(
        f"arn:aws:bedrock:eu-central-1::foundation-model/vendor.model-{i:03d}-v1:0"
        for i in range(count)
    )


def test_session_policy_too_large_is_refused() -> None:
    fits = make_scope(resource_arns=_arns(20))
    assert len(session_policy(fits)) <= POLICY_MAX_CHARS
    too_many = make_scope(resource_arns=_arns(40))
    with pytest.raises(CredentialsUnavailable) as info:
        session_policy(too_many)
    assert info.value.message == "Could not obtain credentials for this call"
    assert info.value.detail is not None and "2048" in info.value.detail


@pytest.mark.parametrize(
    "overrides",
    [
        {"resource_arns": ()},
        {"actions": ()},
        {"resource_arns": ("arn:aws:bedrock:eu-central-1::foundation-model/*",)},
        {"actions": ("bedrock:*",)},
    ],
)
def test_session_policy_never_broadens(overrides: dict[str, Any]) -> None:
    with pytest.raises(CredentialsUnavailable):
        session_policy(make_scope(**overrides))


@pytest.mark.parametrize(
    ("wanted", "maximum", "expected"),
    [
        (1800, 3600, 1800),
        (60, 3600, 900),
        (7200, 3600, 3600),
        (50000, 43200, 43200),
        (43200, 43200, 43200),
        (900, 900, 900),
    ],
)
def test_duration_is_clamped(wanted: int, maximum: int, expected: int) -> None:
    assert duration_seconds(make_scope(session_seconds=wanted), maximum) == expected


@pytest.mark.parametrize(
    ("task_left_s", "expected"),
    [(1200.8, 1200), (3000, 1800), (60, 900)],
    ids=["task-ends-first", "policy-shorter", "sts-minimum"],
)
def test_duration_never_outlives_the_task(task_left_s: float, expected: int) -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    scope = make_scope(session_seconds=1800, not_after=now + timedelta(seconds=task_left_s))
    assert duration_seconds(scope, 3600, now) == expected


def test_assume_role_params() -> None:
    params = assume_role_params(make_scope(), 3600)
    assert params["RoleArn"] == ROLE_ARN
    assert params["RoleSessionName"] == "example.org@ns@prod@sa@api"
    assert params["SourceIdentity"] == "example.org@ns@prod@sa@api"
    assert params["DurationSeconds"] == 1800
    assert json.loads(params["Policy"])["Statement"][0]["Resource"] == [MODEL_ARN]
    assert {"Key": "task", "Value": "task-1"} in params["Tags"]


def test_session_credentials_repr_hides_secrets() -> None:
    creds = SessionCredentials(
        access_key_id="AKIA1",
        secret_access_key="SECRET-VALUE",
        session_token="TOKEN-VALUE",
        expiration=datetime.now(UTC),
        role_session_name="n",
        source_identity="s",
        assumed_role_arn="arn",
    )
    assert "SECRET-VALUE" not in repr(creds) and "TOKEN-VALUE" not in repr(creds)


@pytest.mark.parametrize(
    ("kwargs"),
    [
        {"max_session_seconds": 899},
        {"max_session_seconds": 43201},
        {"refresh_margin": timedelta(seconds=-1)},
        {"refresh_margin": timedelta(seconds=900)},
    ],
)
def test_broker_rejects_bad_configuration(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        CredentialBroker(object(), clock=lambda: datetime.now(UTC), **kwargs)


# --- broker against moto's STS ---------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class StsHarness:
    """A real botocore STS client pointed at moto, recording what it sent."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.sent: list[dict[str, str]] = []
        self.gate = threading.Event()
        self.gate.set()
        client.meta.events.register("before-send.sts.AssumeRole", self._before_send)

    def _before_send(self, request: Any, **_: Any) -> None:
        # Signed and about to go on the wire. Runs in the executor thread: a
        # closed gate holds the STS call in flight.
        self.gate.wait(timeout=10)
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        self.sent.append({k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()})


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy static credentials; never the developer's AWS config."""
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_MAX_ATTEMPTS",
        "AWS_RETRY_MODE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=4)
    yield pool
    pool.shutdown(wait=True)


def _harness(endpoint_url: str) -> StsHarness:
    client = make_sts_client(
        region="eu-central-1", endpoint_url=endpoint_url, connect_timeout=2, read_timeout=5
    )
    return StsHarness(client)


@pytest.fixture
def sts(aws_env: None, moto_url: str) -> Iterator[StsHarness]:
    harness = _harness(moto_url)
    yield harness
    harness.gate.set()
    harness.client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def broker(sts: StsHarness, clock: Clock, executor: ThreadPoolExecutor) -> CredentialBroker:
    return CredentialBroker(sts.client, clock=clock, executor=executor)


async def test_assume_role_parameters_reach_sts(broker: CredentialBroker, sts: StsHarness) -> None:
    scope = make_scope()
    creds = await broker.credentials_for(scope)

    assert len(sts.sent) == 1
    body = sts.sent[0]
    assert body["Action"] == "AssumeRole"
    assert body["RoleArn"] == ROLE_ARN
    assert body["RoleSessionName"] == "example.org@ns@prod@sa@api"
    assert body["SourceIdentity"] == "example.org@ns@prod@sa@api"
    assert body["DurationSeconds"] == "1800"
    assert body["Policy"] == session_policy(scope)
    sent_tags = {body[f"Tags.member.{i}.Key"]: body[f"Tags.member.{i}.Value"] for i in range(1, 5)}
    assert sent_tags == {
        "trust-domain": "example.org",
        "workload": "/ns/prod/sa/api",
        "task": "task-1",
        "classification": "internal",
    }
    assert "TransitiveTagKeys.member.1" not in body

    # What moto's STS recorded for the session it issued.
    recorded = sts_backends[ACCOUNT]["aws"].get_assumed_role_from_access_key(creds.access_key_id)
    assert recorded is not None
    assert recorded.session_name == creds.role_session_name
    assert recorded.policy == session_policy(scope)
    assert creds.assumed_role_arn.endswith(":assumed-role/bedrock-task/example.org@ns@prod@sa@api")
    assert creds.source_identity == "example.org@ns@prod@sa@api"
    assert creds.expiration.tzinfo is not None
    lifetime = creds.expiration - datetime.now(UTC)
    assert timedelta(seconds=1700) < lifetime <= timedelta(seconds=1800)


async def test_cached_until_refresh_margin(
    broker: CredentialBroker, sts: StsHarness, clock: Clock
) -> None:
    scope = make_scope()
    first = await broker.credentials_for(scope)
    assert await broker.credentials_for(scope) is first
    assert broker.sts_calls == 1

    # Just before the margin: still cached.
    clock.offset = first.expiration - datetime.now(UTC) - timedelta(minutes=6)
    assert await broker.credentials_for(scope) is first
    assert broker.sts_calls == 1

    # Inside the margin: refreshed with one new STS call.
    clock.offset = first.expiration - datetime.now(UTC) - timedelta(minutes=4)
    second = await broker.credentials_for(scope)
    assert broker.sts_calls == 2
    assert second.access_key_id != first.access_key_id
    assert len(sts.sent) == 2


async def test_expired_credentials_are_never_returned(
    broker: CredentialBroker, clock: Clock
) -> None:
    # A clock past anything STS will issue: fresh credentials are already expired.
    clock.offset = timedelta(days=1)
    with pytest.raises(CredentialsUnavailable) as info:
        await broker.credentials_for(make_scope())
    assert info.value.detail is not None and "expired" in info.value.detail


async def test_one_sts_call_for_200_concurrent_callers(
    broker: CredentialBroker, sts: StsHarness
) -> None:
    sts.gate.clear()
    scope = make_scope()
    waiters = [asyncio.create_task(broker.credentials_for(scope)) for _ in range(200)]
    await asyncio.sleep(0.05)
    assert not any(w.done() for w in waiters)  # all of them are waiting on the one call
    sts.gate.set()
    results = await asyncio.gather(*waiters)

    assert broker.sts_calls == 1
    assert len(sts.sent) == 1
    assert len({r.access_key_id for r in results}) == 1


async def test_different_tasks_get_different_credentials(broker: CredentialBroker) -> None:
    one = await broker.credentials_for(make_scope(task_id="task-1"))
    two = await broker.credentials_for(make_scope(task_id="task-2"))
    three = await broker.credentials_for(make_scope(task_id="task-1", region="us-east-1"))
    assert len({one.access_key_id, two.access_key_id, three.access_key_id}) == 3
    assert broker.sts_calls == 3


async def test_cancelled_waiter_does_not_cancel_the_shared_fetch(
    broker: CredentialBroker, sts: StsHarness
) -> None:
    sts.gate.clear()
    scope = make_scope()
    leaving = asyncio.create_task(broker.credentials_for(scope))
    staying = asyncio.create_task(broker.credentials_for(scope))
    await asyncio.sleep(0.05)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    sts.gate.set()
    creds = await staying
    assert broker.sts_calls == 1
    assert await broker.credentials_for(scope) is creds  # the shared result was cached


async def test_drop_task(broker: CredentialBroker) -> None:
    a1 = await broker.credentials_for(make_scope(task_id="a"))
    await broker.credentials_for(make_scope(task_id="a", region="us-east-1"))
    b = await broker.credentials_for(make_scope(task_id="b"))

    assert broker.drop_task("a") == 2
    assert broker.drop_task("a") == 0
    assert await broker.credentials_for(make_scope(task_id="b")) is b
    again = await broker.credentials_for(make_scope(task_id="a"))
    assert again.access_key_id != a1.access_key_id
    assert broker.sts_calls == 4


async def test_drop_task_while_in_flight(broker: CredentialBroker, sts: StsHarness) -> None:
    sts.gate.clear()
    scope = make_scope(task_id="ending")
    waiter = asyncio.create_task(broker.credentials_for(scope))
    await asyncio.sleep(0.05)
    assert broker.drop_task("ending") == 1
    sts.gate.set()
    with pytest.raises(CredentialsUnavailable) as info:
        await waiter
    assert info.value.detail is not None and "ended" in info.value.detail
    # The result of the dropped fetch was not stored: the next call goes to STS again.
    await broker.credentials_for(scope)
    assert broker.sts_calls == 2


async def test_sts_unreachable_fails_closed_and_is_not_cached(
    aws_env: None, clock: Clock, executor: ThreadPoolExecutor
) -> None:
    harness = _harness(f"http://127.0.0.1:{devstack.free_port()}")
    try:
        broker = CredentialBroker(harness.client, clock=clock, executor=executor)
        scope = make_scope()
        results = await asyncio.gather(
            broker.credentials_for(scope), broker.credentials_for(scope), return_exceptions=True
        )
        assert broker.sts_calls == 1
        for result in results:
            assert isinstance(result, CredentialsUnavailable)
            assert result.message == "Could not obtain credentials for this call"
            assert result.detail is not None and "EndpointConnectionError" in result.detail
            assert "127.0.0.1" not in result.message
        with pytest.raises(CredentialsUnavailable):
            await broker.credentials_for(scope)
        assert broker.sts_calls == 2  # the failure was not cached
    finally:
        harness.client.close()


async def test_no_proxy_credentials_is_credentials_unavailable(
    aws_env: None,
    moto_url: str,
    clock: Clock,
    executor: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    harness = _harness(moto_url)
    try:
        broker = CredentialBroker(harness.client, clock=clock, executor=executor)
        with pytest.raises(CredentialsUnavailable) as info:
            await broker.credentials_for(make_scope())
        assert info.value.detail is not None and "NoCredentialsError" in info.value.detail
        assert harness.sent == []
    finally:
        harness.client.close()


@pytest.fixture
def moto_enforces_auth(moto_url: str) -> Iterator[None]:
    """Turn on moto's IAM authentication so unknown keys are refused; restore afterwards."""

    def post(count: str) -> str:
        request = urllib.request.Request(
            f"{moto_url}/moto-api/reset-auth",
            data=count.encode(),
            method="POST",
            # Not form-encoded, so moto reads the raw body.
            headers={"Content-Type": "text/plain"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, str] = json.load(response)
        return answer["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]

    previous = post("0")
    try:
        yield
    finally:
        post(previous)


async def test_sts_refusal_is_translated(
    moto_enforces_auth: None, broker: CredentialBroker
) -> None:
    with pytest.raises(CredentialsUnavailable) as info:
        await broker.credentials_for(make_scope())
    assert info.value.message == "Could not obtain credentials for this call"
    assert info.value.detail is not None and "InvalidClientTokenId" in info.value.detail
    assert isinstance(info.value.__cause__, CredentialsUnavailable)


async def test_policy_too_large_never_reaches_sts(
    broker: CredentialBroker, sts: StsHarness
) -> None:
    with pytest.raises(CredentialsUnavailable):
        await broker.credentials_for(make_scope(resource_arns=_arns(40)))
    assert sts.sent == []


async def test_long_spiffe_ids_sharing_a_prefix_get_distinct_sessions(
    broker: CredentialBroker, sts: StsHarness
) -> None:
    first = await broker.credentials_for(make_scope(spiffe_id=LONG_PREFIX + "/alpha"))
    second = await broker.credentials_for(make_scope(spiffe_id=LONG_PREFIX + "/beta"))
    assert first.role_session_name != second.role_session_name
    assert first.source_identity != second.source_identity
    for body in sts.sent:
        assert len(body["RoleSessionName"]) == NAME_MAX_CHARS
        assert AWS_NAME.match(body["RoleSessionName"])
        assert AWS_NAME.match(body["SourceIdentity"])


def test_scope_replace_is_a_new_key() -> None:
    scope = make_scope()
    assert replace(scope, classification="restricted") != scope


def test_listing_is_the_only_action_allowed_on_every_resource() -> None:
    listing = json.loads(
        session_policy(make_scope(actions=("bedrock:ListAsyncInvokes",), resource_arns=("*",)))
    )
    [statement] = listing["Statement"]
    assert statement["Resource"] == "*"
    assert statement["Action"] == ["bedrock:ListAsyncInvokes"]
    assert statement["Condition"] == {"StringEquals": {"aws:RequestedRegion": "eu-central-1"}}
    for actions in (("bedrock:InvokeModel",), ("bedrock:ListAsyncInvokes", "bedrock:InvokeModel")):
        with pytest.raises(CredentialsUnavailable):
            session_policy(make_scope(actions=actions, resource_arns=("*",)))
