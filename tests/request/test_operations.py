from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import botocore.session
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from proxy.errors import InvalidRequest, NotImplementedOperation, UnknownOperation
from proxy.request.operations import Route, parse_route

ACCT = "123456789012"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"

MODEL_IDS = [
    "anthropic.claude-3-haiku-20240307-v1:0",
    "amazon.titan-embed-text-v2:0",
    "anthropic.claude-v2",
    f"us.{SONNET}",
    f"eu.{SONNET}",
    f"apac.{SONNET}",
    f"global.{SONNET}",
    f"us-gov.{SONNET}",
    f"jp.{SONNET}",
    f"au.{SONNET}",
    f"ca.{SONNET}",
    f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET}",
    f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
    f"arn:aws:bedrock:us-east-1:{ACCT}:application-inference-profile/a1b2c3d4e5f6",
    f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model/abcdef123456",
    f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/amazon.titan-text-express-v1:0:8k/abcdefghijkl",
    f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model-deployment/abcdef123456",
    f"arn:aws:bedrock:us-east-1:{ACCT}:imported-model/abcdef123456",
    f"arn:aws:bedrock:us-east-1:{ACCT}:prompt/PROMPT1234:3",
    f"arn:aws:bedrock:us-east-1:{ACCT}:default-prompt-router/anthropic.claude:1",
    f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:provisioned-model/abcdef123456",
]

# path action -> (operation, stream, IAM actions, botocore client method)
MODEL_OPERATIONS = {
    "invoke": ("InvokeModel", False, ("bedrock:InvokeModel",), "invoke_model"),
    "invoke-with-response-stream": (
        "InvokeModelWithResponseStream",
        True,
        ("bedrock:InvokeModelWithResponseStream",),
        "invoke_model_with_response_stream",
    ),
    "converse": ("Converse", False, ("bedrock:InvokeModel",), "converse"),
    "converse-stream": (
        "ConverseStream",
        True,
        ("bedrock:InvokeModelWithResponseStream",),
        "converse_stream",
    ),
    "count-tokens": ("CountTokens", False, ("bedrock:CountTokens",), "count_tokens"),
}

_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "invoke_model": {"body": b"{}"},
    "invoke_model_with_response_stream": {"body": b"{}"},
    "converse": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "converse_stream": {"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
    "count_tokens": {"input": {"invokeModel": {"body": b"{}"}}},
}


class _Captured(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def _capture(request: Any, **_: Any) -> None:
    # Stop before anything leaves the process; keep the exact URL botocore built.
    raise _Captured(request.url)


@pytest.fixture(scope="module")
def botocore_target() -> Iterator[Callable[..., str]]:
    """Return f(method, **params) -> the path?query botocore would put on the wire."""
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
    )
    client.meta.events.register("before-send.bedrock-runtime", _capture)

    def target(method: str, **params: Any) -> str:
        with pytest.raises(_Captured) as captured:
            getattr(client, method)(**params)
        parts = urlsplit(captured.value.url)
        return f"{parts.path}?{parts.query}" if parts.query else parts.path

    yield target
    client.close()


@pytest.mark.parametrize("model_id", MODEL_IDS)
@pytest.mark.parametrize("action", sorted(MODEL_OPERATIONS))
def test_model_routes_match_botocore_byte_for_byte(
    botocore_target: Callable[..., str], model_id: str, action: str
) -> None:
    operation, stream, iam_actions, client_method = MODEL_OPERATIONS[action]
    wire = botocore_target(client_method, modelId=model_id, **_CALL_KWARGS[client_method])
    route = parse_route("POST", wire)
    assert route == Route(
        operation=operation,
        method="POST",
        stream=stream,
        model_id=model_id,
        guardrail=None,
        async_invocation_arn=None,
        wire_path=wire,
        wire_query="",
        iam_actions=iam_actions,
    )
    assert route.wire_target == wire


@pytest.mark.parametrize(
    ("identifier", "version"),
    [
        ("abc123", "DRAFT"),
        ("abc123", "1"),
        ("gr0abcdefghi", "99999999"),
        (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc123", "DRAFT"),
        (f"arn:aws:bedrock:eu-west-1:{ACCT}:guardrail/abc123", "7"),
        (f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:guardrail/abc123", "2"),
    ],
)
def test_apply_guardrail_matches_botocore(
    botocore_target: Callable[..., str], identifier: str, version: str
) -> None:
    wire = botocore_target(
        "apply_guardrail",
        guardrailIdentifier=identifier,
        guardrailVersion=version,
        source="INPUT",
        content=[{"text": {"text": "hi"}}],
    )
    route = parse_route("POST", wire)
    assert route.operation == "ApplyGuardrail"
    assert route.guardrail == (identifier, version)
    assert route.model_id is None
    assert route.iam_actions == ("bedrock:ApplyGuardrail",)
    assert route.wire_path == wire
    assert route.stream is False


def test_async_invoke_routes_match_botocore(botocore_target: Callable[..., str]) -> None:
    arn = f"arn:aws:bedrock:us-east-1:{ACCT}:async-invoke/abcdefghijkl"
    wire = botocore_target("get_async_invoke", invocationArn=arn)
    get = parse_route("GET", wire)
    assert (get.operation, get.async_invocation_arn, get.wire_path) == ("GetAsyncInvoke", arn, wire)
    assert get.iam_actions == ("bedrock:GetAsyncInvoke",)

    wire = botocore_target(
        "start_async_invoke",
        modelId="amazon.nova-reel-v1:0",
        modelInput={},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://bucket/out"}},
    )
    start = parse_route("POST", wire)
    assert (start.operation, start.model_id, start.wire_path) == (
        "StartAsyncInvoke",
        None,
        "/async-invoke",
    )
    assert start.iam_actions == ("bedrock:InvokeModel",)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"statusEquals": "Completed"},
        {"maxResults": 1000, "sortBy": "SubmissionTime", "sortOrder": "Descending"},
        {
            "submitTimeAfter": datetime(2024, 1, 1, tzinfo=UTC),
            "submitTimeBefore": datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
            "statusEquals": "InProgress",
            "maxResults": 10,
            "nextToken": "eyJhIjoxfQ==+/x",
            "sortBy": "SubmissionTime",
            "sortOrder": "Ascending",
        },
    ],
)
def test_list_async_invokes_query_matches_botocore(
    botocore_target: Callable[..., str], params: dict[str, Any]
) -> None:
    wire = botocore_target("list_async_invokes", **params)
    route = parse_route("GET", wire)
    assert route.operation == "ListAsyncInvokes"
    assert route.iam_actions == ("bedrock:ListAsyncInvokes",)
    assert route.wire_target == wire
    assert route.wire_query.count("=") == len(params)


@pytest.mark.parametrize(
    ("raw_query", "wire_query"),
    [
        ("", ""),
        ("statusEquals=Failed&X-Amz-Signature=abc&X-Amz-Credential=AKID", "statusEquals=Failed"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Security-Token=tok", ""),
        ("unknown=1&maxResults=5&&", "maxResults=5"),
        ("nextToken=a%2Bb%3D", "nextToken=a%2Bb%3D"),
        # Re-encoded canonically: ":" and "+" are always escaped on the wire.
        (
            "submitTimeAfter=2024-01-01T00:00:00%2B02:00",
            "submitTimeAfter=2024-01-01T00%3A00%3A00%2B02%3A00",
        ),
        ("status%45quals=Completed", "statusEquals=Completed"),
    ],
)
def test_list_async_invokes_keeps_only_known_filters(raw_query: str, wire_query: str) -> None:
    route = parse_route("GET", f"/async-invoke?{raw_query}")
    assert route.wire_query == wire_query


@pytest.mark.parametrize(
    "raw_query",
    [
        "statusEquals=Completed&statusEquals=Failed",
        "statusEquals=completed",
        "statusEquals=",
        "statusEquals",
        "sortBy=Name",
        "sortOrder=up",
        "maxResults=0",
        "maxResults=1001",
        "maxResults=01",
        "maxResults=-1",
        "maxResults=1e3",
        "nextToken=",
        "nextToken=a%20b",
        "nextToken=a%0Ab",
        "submitTimeAfter=yesterday",
        "submitTimeAfter=2024-13-01T00:00:00Z",
        "submitTimeBefore=2024-01-01T00:00:00Z%00",
        "statusEquals=%zz",
        "%zz=1",
        "nextToken=%ff",
    ],
)
def test_list_async_invokes_rejects_bad_filters(raw_query: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_route("GET", f"/async-invoke?{raw_query}")
    assert err.value.status == 400


@pytest.mark.parametrize(
    "raw_path",
    [
        "/model/anthropic.claude-v2/invoke?X-Amz-Signature=abc&X-Amz-Credential=AKID",
        "/model/anthropic.claude-v2/invoke?foo=bar",
        "/model/anthropic.claude-v2/invoke?",
    ],
)
def test_query_is_dropped_outside_list_async_invokes(raw_path: str) -> None:
    route = parse_route("POST", raw_path)
    assert route.wire_query == ""
    assert route.wire_target == "/model/anthropic.claude-v2/invoke"


@pytest.mark.parametrize(
    ("raw_path", "model_id", "wire_path"),
    [
        # Unencoded ':' is decoded the same and re-encoded canonically.
        (f"/model/{SONNET}/invoke", SONNET, f"/model/{quote(SONNET, safe='')}/invoke"),
        # Lower-case escapes are accepted; the wire uses botocore's upper case.
        (
            "/model/anthropic.claude-v2%3a1/converse",
            "anthropic.claude-v2:1",
            "/model/anthropic.claude-v2%3A1/converse",
        ),
        # Over-encoded unreserved characters are decoded once and re-encoded minimally.
        (
            "/model/anthropic%2Eclaude-v2/invoke",
            "anthropic.claude-v2",
            "/model/anthropic.claude-v2/invoke",
        ),
    ],
)
def test_wire_path_is_canonical(raw_path: str, model_id: str, wire_path: str) -> None:
    route = parse_route("POST", raw_path)
    assert route.model_id == model_id
    assert route.wire_path == wire_path


@pytest.mark.parametrize(
    ("raw_path", "message_part"),
    [
        # Double encoding: one decode leaves a '%' in the id.
        ("/model/anthropic.claude-3-haiku-20240307-v1%253A0/invoke", "encoded twice"),
        (
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A%253Afoundation-model%252F"
            "anthropic.claude-v2/invoke",
            "encoded twice",
        ),
        ("/model//invoke", "empty"),
        ("/model/anthropic.claude%20v2/invoke", "characters outside"),
        ("/model/anthropic.claude%00v2/invoke", "characters outside"),
        ("/model/anthropic.cl%C3%A4ude/invoke", "characters outside"),
        ("/model/%2E%2E/invoke", "'..'"),
        ("/model/..%2Fanthropic.claude-v2/invoke", "'..'"),
        ("/model/Anthropic.claude-v2/invoke", "foundation model id"),
        (
            "/model/arn%3Aaws%3Asagemaker%3Aus-east-1%3A123456789012%3Aendpoint%2Fe/invoke",
            "service",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A12345678901%3Aprovisioned-model%2Fabc/invoke",
            "12-digit",
        ),
        ("/model/" + "a" * 2049 + "/invoke", "longer than 2048"),
        ("/model/anthropic." + "a" * 250 + "/count-tokens", "at most 256"),
        # Malformed percent-escapes and invalid UTF-8 after decoding.
        ("/model/anthropic.claude%3/invoke", "malformed percent-escape"),
        ("/model/anthropic.claude%zz/invoke", "malformed percent-escape"),
        ("/model/anthropic.claude%/invoke", "malformed percent-escape"),
        ("/model/anthropic.claude%FF/invoke", "not valid UTF-8"),
        ("/model/anthropic.claude%C3/invoke", "not valid UTF-8"),
        ("/model/%ED%A0%80/invoke", "not valid UTF-8"),
        # Guardrails.
        ("/guardrail//version/1/apply", "guardrail identifier"),
        ("/guardrail/ABC/version/1/apply", "guardrail identifier"),
        ("/guardrail/abc%2F1/version/1/apply", "guardrail identifier"),
        ("/guardrail/" + "a" * 65 + "/version/1/apply", "guardrail identifier"),
        (
            "/guardrail/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aguardrail%2Fabc%253A1"
            "/version/1/apply",
            "guardrail identifier",
        ),
        (
            "/guardrail/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Aguardrail%2Fabc/version/1/apply",
            "guardrail identifier",
        ),
        (
            "/guardrail/arn%3Aaws%3Abedrock%3Amoon%3A123456789012%3Aguardrail%2Fabc/version/1/apply",
            "guardrail identifier",
        ),
        ("/guardrail/abc/version/0/apply", "guardrail version"),
        ("/guardrail/abc/version/123456789/apply", "guardrail version"),
        ("/guardrail/abc/version/draft/apply", "guardrail version"),
        ("/guardrail/abc/version//apply", "guardrail version"),
        ("/guardrail/abc/version/1%2E0/apply", "guardrail version"),
        # Async invocation ARNs.
        ("/async-invoke/", "async invocation ARN"),
        ("/async-invoke/abcdefghijkl", "async invocation ARN"),
        (
            "/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aasync-invoke%2Fabc",
            "async invocation ARN",
        ),
        (
            "/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aasync-invoke%252Fabcdefghijkl",
            "async invocation ARN",
        ),
        ("/async-invoke/%zz", "malformed percent-escape"),
    ],
)
def test_malformed_labels_are_refused(raw_path: str, message_part: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_route("GET" if raw_path.startswith("/async-invoke/") else "POST", raw_path)
    assert type(err.value) is InvalidRequest
    assert err.value.status == 400
    assert message_part in err.value.message


@pytest.mark.parametrize(
    ("method", "raw_path"),
    [
        # Unknown or malformed paths.
        ("POST", ""),
        ("POST", "model/anthropic.claude-v2/invoke"),
        ("POST", "/"),
        ("POST", "//model/anthropic.claude-v2/invoke"),
        ("POST", "/model/anthropic.claude-v2/invoke/"),
        ("POST", "/model/anthropic.claude-v2/invoke/extra"),
        ("POST", "/model/anthropic.claude-v2"),
        ("POST", "/model/anthropic.claude-v2/"),
        ("POST", "/model/anthropic.claude-v2/generate"),
        ("POST", "/model/anthropic.claude-v2/Invoke"),
        ("POST", "/model/anthropic.claude-v2/%69nvoke"),
        ("POST", "/model/anthropic.claude-v2/invoke%2F"),
        # An unencoded '/' in an ARN splits it and changes the route.
        ("POST", f"/model/arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model/abcdef123456/invoke"),
        ("POST", "/Model/anthropic.claude-v2/invoke"),
        ("POST", "/model%2Fanthropic.claude-v2/invoke"),
        ("POST", "/models/anthropic.claude-v2/invoke"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/guardrail/abc/version/1"),
        ("POST", "/guardrail/abc/versions/1/apply"),
        ("POST", "/guardrail/abc/version/1/apply/x"),
        ("GET", "/async-invoke/a/b"),
        # The bedrock control plane is never reachable here.
        ("GET", "/foundation-models"),
        ("GET", f"/foundation-models/{SONNET}"),
        ("GET", "/inference-profiles"),
        ("POST", "/inference-profiles"),
        ("GET", "/guardrails"),
        ("POST", "/guardrails"),
        ("GET", "/custom-models"),
        ("POST", "/model-customization-jobs"),
        ("POST", "/provisioned-model-throughput"),
        ("GET", "/logging/modelinvocations"),
        ("PUT", "/logging/modelinvocations"),
        ("POST", "/v1/tasks"),
        # Wrong methods on known paths.
        ("GET", "/model/anthropic.claude-v2/invoke"),
        ("PUT", "/model/anthropic.claude-v2/converse"),
        ("HEAD", "/model/anthropic.claude-v2/converse-stream"),
        ("DELETE", "/model/anthropic.claude-v2/count-tokens"),
        ("post", "/model/anthropic.claude-v2/invoke"),
        ("GET", "/model/anthropic.claude-v2/invoke-with-bidirectional-stream"),
        ("GET", "/guardrail/abc/version/1/apply"),
        ("PUT", "/async-invoke"),
        ("DELETE", "/async-invoke"),
        (
            "POST",
            f"/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCT}%3Aasync-invoke%2Fabcdefghijkl",
        ),
        (
            "DELETE",
            f"/async-invoke/arn%3Aaws%3Abedrock%3Aus-east-1%3A{ACCT}%3Aasync-invoke%2Fabcdefghijkl",
        ),
        ("GET", "/guardrail-checks/invoke"),
    ],
)
def test_unknown_operations_are_404(method: str, raw_path: str) -> None:
    with pytest.raises(UnknownOperation) as err:
        parse_route(method, raw_path)
    assert err.value.status == 404
    assert err.value.error_type == "UnknownOperationException"


def test_wrong_method_is_checked_before_the_label() -> None:
    # A GET with a junk id must not leak whether the id would have been valid.
    with pytest.raises(UnknownOperation):
        parse_route("GET", "/model/%zz/invoke")


@pytest.mark.parametrize(
    ("raw_path", "operation"),
    [
        (
            "/model/anthropic.claude-v2/invoke-with-bidirectional-stream",
            "InvokeModelWithBidirectionalStream",
        ),
        (
            "/model/amazon.nova-sonic-v1%3A0/invoke-with-bidirectional-stream",
            "InvokeModelWithBidirectionalStream",
        ),
        ("/guardrail-checks/invoke", "InvokeGuardrailChecks"),
    ],
)
def test_unsupported_data_plane_operations_are_501(raw_path: str, operation: str) -> None:
    with pytest.raises(NotImplementedOperation) as err:
        parse_route("POST", raw_path)
    assert err.value.status == 501
    assert operation in err.value.message
    assert "not supported through the proxy yet" in err.value.message


# --- the region prefix: https://<proxy>/region/<region> as an SDK's endpoint ---------


def _botocore_paths(endpoint: str) -> dict[str, tuple[str, str]]:
    """operation -> (method, path?query) botocore sends through ``endpoint``."""
    client = botocore.session.get_session().create_client(
        "bedrock-runtime",
        region_name="us-west-2",
        endpoint_url=endpoint,
        config=Config(signature_version=UNSIGNED),  # as the README's applications
    )
    client.meta.events.register("before-send.bedrock-runtime", _capture)
    arn = f"arn:aws:bedrock:us-west-2:{ACCT}:async-invoke/abcdefghijkl"
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "Converse": ("converse", {"modelId": SONNET, **_CALL_KWARGS["converse"]}),
        "InvokeModel": ("invoke_model", {"modelId": SONNET, "body": b"{}"}),
        "GetAsyncInvoke": ("get_async_invoke", {"invocationArn": arn}),
        "ListAsyncInvokes": ("list_async_invokes", {"maxResults": 3}),
        "ApplyGuardrail": (
            "apply_guardrail",
            {
                "guardrailIdentifier": "abc123",
                "guardrailVersion": "1",
                "source": "INPUT",
                "content": [{"text": {"text": "x"}}],
            },
        ),
    }
    paths = {}
    try:
        for operation, (method, params) in calls.items():
            with pytest.raises(_Captured) as captured:
                getattr(client, method)(**params)
            parts = urlsplit(captured.value.url)
            http_method = "GET" if operation.endswith(("AsyncInvoke", "AsyncInvokes")) else "POST"
            paths[operation] = (http_method, f"{parts.path}?{parts.query}".rstrip("?"))
    finally:
        client.close()
    return paths


@pytest.mark.parametrize("slash", ["", "/"])
def test_botocore_keeps_the_endpoint_path_and_the_prefix_is_stripped(slash: str) -> None:
    # The whole feature rests on this: an unmodified SDK whose endpoint_url has a
    # path sends it before every operation's path.
    plain = _botocore_paths("https://proxy.test:8443")
    prefixed = _botocore_paths("https://proxy.test:8443/region/us-west-2" + slash)
    for operation, (method, target) in prefixed.items():
        assert target == "/region/us-west-2" + plain[operation][1]
        route = parse_route(method, target)
        assert route.operation == operation
        assert route.region == "us-west-2"
        # What goes upstream (and is signed) is the path without the prefix.
        assert route.wire_target == plain[operation][1]
        assert replace(route, region=None) == parse_route(method, plain[operation][1])


def test_no_prefix_names_no_region() -> None:
    assert parse_route("POST", f"/model/{quote(SONNET, safe='')}/converse").region is None


@pytest.mark.parametrize(
    "raw_path",
    [
        "/region/moon/model/anthropic.claude-v2/invoke",
        "/region/US-WEST-2/model/anthropic.claude-v2/invoke",
        "/region//model/anthropic.claude-v2/invoke",
        # Never decoded: a region has no character to encode.
        "/region/us%2Dwest-2/model/anthropic.claude-v2/invoke",
        "/region/us-west-2%2Fmodel/anthropic.claude-v2/invoke",
        "/region/us-west-2 /model/anthropic.claude-v2/invoke",
        "/region/us-west-2.x/model/anthropic.claude-v2/invoke",
    ],
)
def test_a_malformed_region_prefix_is_a_400(raw_path: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_route("POST", raw_path)
    assert type(err.value) is InvalidRequest
    assert "/region/<region>" in err.value.message


@pytest.mark.parametrize(
    "raw_path",
    [
        "/region/us-west-2",
        "/region/us-west-2/",
        # One prefix only: a second one is no bedrock-runtime path.
        "/region/us-west-2/region/us-west-2/model/anthropic.claude-v2/invoke",
        "/region/us-west-2/v1/tasks",
        "/%72egion/us-west-2/model/anthropic.claude-v2/invoke",
        "/Region/us-west-2/model/anthropic.claude-v2/invoke",
    ],
)
def test_the_prefix_alone_or_spelled_otherwise_is_no_route(raw_path: str) -> None:
    with pytest.raises(UnknownOperation):
        parse_route("POST", raw_path)


# --- ARNs in the path: their account and region --------------------------------------


@pytest.mark.parametrize(
    ("identifier", "partition", "region"),
    [
        (f"arn:aws:bedrock:us-west-2:{ACCT}:guardrail/abc123", "aws", "us-west-2"),
        (f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:guardrail/abc123", "aws-us-gov", None),
        (f"arn:aws-cn:bedrock:cn-north-1:{ACCT}:guardrail/abc123", "aws-cn", None),
    ],
)
def test_guardrail_arn_gives_its_account_and_region(
    identifier: str, partition: str, region: str | None
) -> None:
    route = parse_route("POST", f"/guardrail/{quote(identifier, safe='')}/version/1/apply")
    assert route.resource is not None
    assert route.resource.arn == identifier
    assert (route.resource.type, route.resource.account) == ("guardrail", ACCT)
    assert route.resource.partition == partition
    assert route.resource.region == identifier.split(":")[3]


def test_guardrail_id_names_no_resource_arn() -> None:
    assert parse_route("POST", "/guardrail/abc123/version/1/apply").resource is None


def test_invocation_arn_gives_its_account_and_region() -> None:
    arn = f"arn:aws:bedrock:eu-west-1:{ACCT}:async-invoke/abcdefghijkl"
    route = parse_route("GET", "/async-invoke/" + quote(arn, safe=""))
    assert route.resource is not None
    assert route.resource.to_opa() == {
        "arn": arn,
        "type": "async-invoke",
        "account": ACCT,
        "region": "eu-west-1",
    }


@pytest.mark.parametrize(
    ("method", "raw_path", "message_part"),
    [
        # A region outside the ARN's partition is no ARN of any partition.
        (
            "POST",
            "/guardrail/"
            + quote(f"arn:aws-cn:bedrock:us-east-1:{ACCT}:guardrail/abc", safe="")
            + "/version/1/apply",
            "guardrail identifier",
        ),
        (
            "POST",
            "/guardrail/"
            + quote(f"arn:aws:bedrock:cn-north-1:{ACCT}:guardrail/abc", safe="")
            + "/version/1/apply",
            "guardrail identifier",
        ),
        (
            "GET",
            "/async-invoke/"
            + quote(f"arn:aws-us-gov:bedrock:us-east-1:{ACCT}:async-invoke/abcdefghijkl", safe=""),
            "async invocation ARN",
        ),
        # The resource type must be the one of the route.
        (
            "GET",
            "/async-invoke/"
            + quote(f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abcdefghijkl", safe=""),
            "async invocation ARN",
        ),
        (
            "POST",
            "/guardrail/"
            + quote(f"arn:aws:bedrock:us-east-1:{ACCT}:async-invoke/abc", safe="")
            + "/version/1/apply",
            "guardrail identifier",
        ),
    ],
)
def test_resource_arns_read_one_way_only(method: str, raw_path: str, message_part: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_route(method, raw_path)
    assert message_part in err.value.message
