from __future__ import annotations

from typing import Any

import pytest

from proxy.errors import InvalidRequest
from proxy.request.models import KINDS, PROFILE_GEOS, ModelRef, parse_model_id, validate_model_id

ACCT = "123456789012"
SONNET = "anthropic.claude-3-5-sonnet-20240620-v1:0"


def _ref(**fields: Any) -> ModelRef:
    base: dict[str, Any] = {
        "provider": None,
        "arn": None,
        "account": None,
        "region": None,
        "geo": None,
        "foundation_id": None,
    }
    base.update(fields)
    return ModelRef(**base)


# (decoded id, region, account, expected ModelRef)
VALID: list[tuple[str, str, str | None, ModelRef]] = [
    # Plain foundation model ids.
    *[
        (
            fid,
            "us-east-1",
            None,
            _ref(
                id=fid,
                kind="foundation-model",
                provider=provider,
                arn=f"arn:aws:bedrock:us-east-1::foundation-model/{fid}",
                foundation_id=fid,
            ),
        )
        for fid, provider in [
            ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic"),
            ("anthropic.claude-3-haiku-20240307-v1:0:200k", "anthropic"),
            ("anthropic.claude-v2", "anthropic"),
            ("amazon.titan-embed-text-v2:0", "amazon"),
            ("amazon.nova-pro-v1:0", "amazon"),
            ("meta.llama3-1-70b-instruct-v1:0", "meta"),
            ("mistral.mistral-large-2407-v1:0", "mistral"),
            ("cohere.command-r-plus-v1:0", "cohere"),
            ("ai21.jamba-1-5-large-v1:0", "ai21"),
            ("deepseek.r1-v1:0", "deepseek"),
            ("openai.gpt-oss-120b-1:0", "openai"),
            ("qwen.qwen3-32b-v1:0", "qwen"),
            ("stability.sd3-5-large-v1:0", "stability"),
            ("twelvelabs.marengo-embed-2-7-v1:0", "twelvelabs"),
            ("writer.palmyra-x5-v1:0", "writer"),
            ("vendor.model_name-v1:0", "vendor"),
        ]
    ],
    # GovCloud and China partitions in the derived ARN.
    (
        SONNET,
        "us-gov-west-1",
        ACCT,
        _ref(
            id=SONNET,
            kind="foundation-model",
            provider="anthropic",
            arn=f"arn:aws-us-gov:bedrock:us-gov-west-1::foundation-model/{SONNET}",
            foundation_id=SONNET,
        ),
    ),
    (
        "deepseek.v3-v1:0",
        "cn-north-1",
        None,
        _ref(
            id="deepseek.v3-v1:0",
            kind="foundation-model",
            provider="deepseek",
            arn="arn:aws-cn:bedrock:cn-north-1::foundation-model/deepseek.v3-v1:0",
            foundation_id="deepseek.v3-v1:0",
        ),
    ),
    # Every system cross-region profile prefix, with and without a known account.
    *[
        (
            f"{geo}.{SONNET}",
            "eu-west-1",
            ACCT,
            _ref(
                id=f"{geo}.{SONNET}",
                kind="inference-profile",
                provider="anthropic",
                arn=f"arn:aws:bedrock:eu-west-1:{ACCT}:inference-profile/{geo}.{SONNET}",
                account=ACCT,
                geo=geo,
                foundation_id=SONNET,
            ),
        )
        for geo in sorted(PROFILE_GEOS)
    ],
    (
        "us.meta.llama3-2-90b-instruct-v1:0",
        "us-west-2",
        None,
        _ref(
            id="us.meta.llama3-2-90b-instruct-v1:0",
            kind="inference-profile",
            provider="meta",
            geo="us",
            foundation_id="meta.llama3-2-90b-instruct-v1:0",
        ),
    ),
    # ARNs of every kind.
    (
        f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET}",
        "us-west-2",
        None,
        _ref(
            id=f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET}",
            kind="foundation-model",
            provider="anthropic",
            arn=f"arn:aws:bedrock:us-east-1::foundation-model/{SONNET}",
            region="us-east-1",
            foundation_id=SONNET,
        ),
    ),
    (
        f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
        "us-east-1",
        None,
        _ref(
            id=f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
            kind="inference-profile",
            provider="anthropic",
            arn=f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
            account=ACCT,
            region="us-east-1",
            geo="us",
            foundation_id=SONNET,
        ),
    ),
    (
        f"arn:aws:bedrock:eu-central-1:{ACCT}:inference-profile/global.{SONNET}",
        "eu-central-1",
        ACCT,
        _ref(
            id=f"arn:aws:bedrock:eu-central-1:{ACCT}:inference-profile/global.{SONNET}",
            kind="inference-profile",
            provider="anthropic",
            arn=f"arn:aws:bedrock:eu-central-1:{ACCT}:inference-profile/global.{SONNET}",
            account=ACCT,
            region="eu-central-1",
            geo="global",
            foundation_id=SONNET,
        ),
    ),
    *[
        (
            f"arn:aws:bedrock:us-east-1:{ACCT}:{rtype}/{rid}",
            "us-east-1",
            None,
            _ref(
                id=f"arn:aws:bedrock:us-east-1:{ACCT}:{rtype}/{rid}",
                kind=kind,
                arn=f"arn:aws:bedrock:us-east-1:{ACCT}:{rtype}/{rid}",
                account=ACCT,
                region="us-east-1",
            ),
        )
        for rtype, rid, kind in [
            ("application-inference-profile", "a1b2c3d4e5f6", "application-inference-profile"),
            ("provisioned-model", "abcdef123456", "provisioned-model"),
            ("custom-model", "abcdef123456", "custom-model"),
            ("custom-model-deployment", "abcdef123456", "custom-model-deployment"),
            ("imported-model", "abcdef123456", "imported-model"),
            ("prompt", "PROMPT1234", "prompt"),
            ("prompt", "PROMPT1234:12", "prompt"),
            ("prompt-router", "my-router.v1", "prompt-router"),
            ("default-prompt-router", "anthropic.claude:1", "prompt-router"),
        ]
    ],
    (
        f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/amazon.titan-text-express-v1:0:8k/abcdefghijkl",
        "us-east-1",
        None,
        _ref(
            id=f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/amazon.titan-text-express-v1:0:8k/abcdefghijkl",
            kind="custom-model",
            provider="amazon",
            arn=f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/amazon.titan-text-express-v1:0:8k/abcdefghijkl",
            account=ACCT,
            region="us-east-1",
            foundation_id="amazon.titan-text-express-v1:0:8k",
        ),
    ),
    (
        f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:provisioned-model/abcdef123456",
        "us-gov-west-1",
        None,
        _ref(
            id=f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:provisioned-model/abcdef123456",
            kind="provisioned-model",
            arn=f"arn:aws-us-gov:bedrock:us-gov-west-1:{ACCT}:provisioned-model/abcdef123456",
            account=ACCT,
            region="us-gov-west-1",
        ),
    ),
    (
        "arn:aws-cn:bedrock:cn-northwest-1::foundation-model/deepseek.v3-v1:0",
        "cn-northwest-1",
        None,
        _ref(
            id="arn:aws-cn:bedrock:cn-northwest-1::foundation-model/deepseek.v3-v1:0",
            kind="foundation-model",
            provider="deepseek",
            arn="arn:aws-cn:bedrock:cn-northwest-1::foundation-model/deepseek.v3-v1:0",
            region="cn-northwest-1",
            foundation_id="deepseek.v3-v1:0",
        ),
    ),
]


@pytest.mark.parametrize(("decoded", "region", "account", "expected"), VALID)
def test_parse_model_id(decoded: str, region: str, account: str | None, expected: ModelRef) -> None:
    ref = parse_model_id(decoded, region, account)
    assert ref == expected
    assert ref.kind in KINDS
    assert validate_model_id(decoded) == decoded


def test_every_kind_is_covered_by_the_table() -> None:
    assert {ref.kind for *_, ref in VALID} == set(KINDS)


def test_to_opa_has_the_contract_keys() -> None:
    ref = parse_model_id(f"us.{SONNET}", "us-east-1", ACCT)
    assert ref.to_opa() == {
        "id": f"us.{SONNET}",
        "kind": "inference-profile",
        "provider": "anthropic",
        "arn": f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.{SONNET}",
        "geo": "us",
        "account": ACCT,
        "region": None,
        "foundation_id": SONNET,
    }


INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    ("a" * 2049, "longer than 2048"),
    ("anthropic." + "a" * 2039, "longer than 2048"),
    # A '%' left after the single decode means the caller encoded twice.
    ("anthropic.claude-3-haiku-20240307-v1%3A0", "encoded twice"),
    (f"arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2F{SONNET}", "encoded twice"),
    ("anthropic.claude%2Fx", "encoded twice"),
    ("anthropic.claude v2", "characters outside"),
    (" anthropic.claude-v2", "characters outside"),
    ("anthropic.claude-v2\n", "characters outside"),
    ("anthropic.claude-v2\x00", "characters outside"),
    ("anthropic.claude\t-v2", "characters outside"),
    ("anthropic.clau\u0064e\u0301-v2", "characters outside"),
    ("anthropic.cl\u0430ude-v2", "characters outside"),  # Cyrillic a
    ("anthropic.claude-v\uff12", "characters outside"),  # fullwidth 2
    ("anthropic.claude?x=1", "characters outside"),
    ("anthropic.claude#frag", "characters outside"),
    ("anthropic..claude-v2", "'..'"),
    ("/anthropic.claude-v2", "'..'"),
    ("anthropic.claude-v2/", "'..'"),
    ("../anthropic.claude-v2", "'..'"),
    # Plain ids: lower case, provider.model, no slash, no dangling separators.
    ("Anthropic.claude-v2", "foundation model id"),
    ("anthropic.Claude-v2", "foundation model id"),
    ("anthropic", "foundation model id"),
    ("a1b2c3d4e5f6", "foundation model id"),
    ("anthropic.", "foundation model id"),
    ("anthropic.claude-v2:", "foundation model id"),
    ("anthropic.claude-v2.", "foundation model id"),
    ("anthropic.claude-v2::0", "foundation model id"),
    ("anthropic.claude.:0", "foundation model id"),
    (".anthropic.claude-v2", "foundation model id"),
    ("-anthropic.claude-v2", "foundation model id"),
    ("anthropic/claude.v2", "foundation model id"),
    ("anthropic.claude/v2", "foundation model id"),
    ("us.", "inference profile id"),
    ("us.anthropic", "inference profile id"),
    ("eu.Anthropic.claude-v2", "inference profile id"),
    ("global.anthropic.claude-v2/x", "inference profile id"),
    # ARN structure.
    ("arn:aws:bedrock:us-east-1", "must read arn:"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}", "must read arn:"),
    (f"arn:aws-iso:bedrock:us-iso-east-1::foundation-model/{SONNET}", "partition"),
    (f"arn:aws-eusc:bedrock:eusc-de-east-1::foundation-model/{SONNET}", "partition"),
    (f"arn:AWS:bedrock:us-east-1::foundation-model/{SONNET}", "partition"),
    (f"arn::bedrock:us-east-1::foundation-model/{SONNET}", "partition"),
    (f"arn:aws:sagemaker:us-east-1:{ACCT}:endpoint/my-endpoint", "service must be"),
    (f"arn:aws:bedrock-runtime:us-east-1::foundation-model/{SONNET}", "service must be"),
    (f"arn:aws:s3:::bucket/{SONNET}", "service must be"),
    (f"arn:aws:bedrock:::foundation-model/{SONNET}", "valid region"),
    (f"arn:aws:bedrock:us-east:{ACCT}:provisioned-model/abcdef123456", "valid region"),
    (f"arn:aws:bedrock:US-EAST-1:{ACCT}:provisioned-model/abcdef123456", "valid region"),
    (f"arn:aws:bedrock:us-gov-west-1::foundation-model/{SONNET}", "valid region"),
    (f"arn:aws-us-gov:bedrock:us-east-1::foundation-model/{SONNET}", "valid region"),
    (f"arn:aws-cn:bedrock:eu-west-1::foundation-model/{SONNET}", "valid region"),
    (f"arn:aws:bedrock:cn-north-1::foundation-model/{SONNET}", "valid region"),
    ("arn:aws:bedrock:us-east-1:12345678901:provisioned-model/abcdef123456", "12-digit"),
    ("arn:aws:bedrock:us-east-1:1234567890123:provisioned-model/abcdef123456", "12-digit"),
    ("arn:aws:bedrock:us-east-1:12345678901a:provisioned-model/abcdef123456", "12-digit"),
    ("arn:aws:bedrock:us-east-1::provisioned-model/abcdef123456", "12-digit"),
    (f"arn:aws:bedrock:us-east-1::inference-profile/us.{SONNET}", "12-digit"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:foundation-model/{SONNET}", "empty account"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:guardrail/abc123", "resource type"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:async-invoke/abcdefghijkl", "resource type"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:model-customization-job/abc", "resource type"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:Provisioned-Model/abcdef123456", "resource type"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model", "resource type"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model:abcdef123456", "resource type"),
    # Resource ids.
    ("arn:aws:bedrock:us-east-1::foundation-model/anthropic", "foundation model id"),
    ("arn:aws:bedrock:us-east-1::foundation-model/Anthropic.claude-v2", "foundation model id"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/xx.{SONNET}", "geo one of"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/{SONNET}", "geo one of"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:inference-profile/us.", "geo one of"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model/ABCDEF123456", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model/abc/def", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:provisioned-model/abc_def", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:imported-model/" + "a" * 65, "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:application-inference-profile/a:b", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model-deployment/-abc", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/Amazon.titan/abcdef123456", "custom-model"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/amazon.titan/", "'..'"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:custom-model/a/b/c", "custom-model"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:prompt/SHORT", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:prompt/PROMPT1234:123456", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:prompt/PROMPT1234:", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:prompt-router/router:", "malformed resource"),
    (f"arn:aws:bedrock:us-east-1:{ACCT}:prompt-router/-router", "malformed resource"),
]


@pytest.mark.parametrize(("decoded", "message_part"), INVALID)
def test_invalid_model_ids_are_refused(decoded: str, message_part: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_model_id(decoded)
    assert err.value.status == 400
    assert message_part in err.value.message
    # The caller's string is kept for the audit detail, not echoed in the message.
    assert err.value.detail is not None and err.value.detail.startswith("model_id=")
    with pytest.raises(InvalidRequest):
        parse_model_id(decoded, "us-east-1", ACCT)


@pytest.mark.parametrize(
    "region", ["us-iso-east-1", "us-isob-east-1", "eu-isoe-west-1", "eusc-de-east-1"]
)
def test_plain_ids_outside_supported_partitions_are_refused(region: str) -> None:
    with pytest.raises(InvalidRequest, match="partitions"):
        parse_model_id(SONNET, region)


@pytest.mark.parametrize(
    ("region", "account"),
    [("moon-1", None), ("", None), ("us-east-1", "123"), ("us-east-1", "12345678901x")],
)
def test_parse_model_id_rejects_bad_proxy_inputs(region: str, account: str | None) -> None:
    # Region and account come from the proxy, not the caller: a bad one is a bug.
    with pytest.raises(ValueError):
        parse_model_id(SONNET, region, account)
