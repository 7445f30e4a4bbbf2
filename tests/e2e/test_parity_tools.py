"""Inspection parity for tools, end to end: every tool Bedrock would offer the model
is a tool the policy judged.

The caller is the demo chat workload, whose allowlist is ``lookup`` and
``get_weather``. Each case names the class of bypass it closes; the cases
marked "forwarded before" were sent to Bedrock by the old extraction
(``pipeline._tool_names``), which read only one ``tools`` list per body and
only ``toolSpec.name`` or ``name`` in it (tests/request/test_tools.py keeps
it and shows what it missed).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import CHAT, HAIKU, Emulator, ProxyHandle

MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]
ANTHROPIC = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": MESSAGES}
SCHEMA = {"type": "object", "properties": {}}
LOOKUP = {"toolSpec": {"name": "lookup", "inputSchema": {"json": SCHEMA}}}


def denied(proxy: ProxyHandle, emulator: Emulator, error: ClientError, code: str) -> str:
    """The refusal is a 403 with the policy's reason, audited, and nothing went upstream."""
    response = error.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert response["Error"]["Code"] == "AccessDeniedException"
    message: str = response["Error"]["Message"]
    assert f"{code}:" in message
    assert emulator.requests() == []
    [record] = proxy.request_of(response["ResponseMetadata"]["RequestId"])
    assert (record["event"], record["outcome"]) == ("denied", "denied")
    assert any(reason.startswith(f"{code}:") for reason in record["decision"]["reasons"])
    return message


def invalid(proxy: ProxyHandle, emulator: Emulator, error: ClientError) -> str:
    """The refusal is a 400 before policy is asked, audited, and nothing went upstream."""
    response = error.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert response["Error"]["Code"] == "ValidationException"
    assert emulator.requests() == []
    [record] = proxy.request_of(response["ResponseMetadata"]["RequestId"])
    assert (record["event"], record["outcome"]) == ("denied", "invalid_request")
    assert record["error"]["code"] == "invalid_tools"
    assert record["decision"] is None
    message: str = response["Error"]["Message"]
    return message


def converse(proxy: ProxyHandle, **fields: Any) -> Any:
    return proxy.client(CHAT).converse(modelId=HAIKU, messages=MESSAGES, **fields)


def invoke(proxy: ProxyHandle, body: dict[str, Any]) -> Any:
    return proxy.client(CHAT).invoke_model(modelId=HAIKU, body=json.dumps(body))


# --- tools hidden where the old extraction did not look (forwarded before) ------

HIDDEN: dict[str, tuple[str, Any, str]] = {
    # Class: a field Bedrock merges into the provider's request. Anthropic's
    # computer-use, bash and text-editor tools are passed this way.
    "converse additionalModelRequestFields": (
        "Converse",
        {
            "toolConfig": {"tools": [LOOKUP]},
            "additionalModelRequestFields": {
                "tools": [{"type": "bash_20250124", "name": "bash"}],
                "anthropic_beta": ["computer-use-2025-01-24"],
            },
        },
        "bash",
    ),
    # Class: a decoy key. Any "toolConfig" object made the old reader skip the
    # body's real "tools" list, here an Anthropic server tool.
    "invoke anthropic server tool behind a decoy toolConfig": (
        "InvokeModel",
        {
            **ANTHROPIC,
            "toolConfig": {},
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        "web_search",
    ),
    # Class: another provider's tool shape. The name of an OpenAI-style
    # function sits in "function.name"; shapes are read whatever the model.
    "invoke openai-style function": (
        "InvokeModel",
        {**ANTHROPIC, "tools": [{"type": "function", "function": {"name": "shell_exec"}}]},
        "shell_exec",
    ),
    # Class: a tool named only by the choice that forces the model to call it.
    "invoke tool_choice naming an undeclared tool": (
        "InvokeModel",
        {**ANTHROPIC, "tool_choice": {"type": "tool", "name": "shell_exec"}},
        "shell_exec",
    ),
    # Class: a wrapped body. CountTokens carries an InvokeModel body in base64.
    "count tokens around an invoke body": (
        "CountTokens",
        {**ANTHROPIC, "tools": [{"name": "shell_exec", "input_schema": SCHEMA}]},
        "shell_exec",
    ),
}


@pytest.mark.parametrize("case", sorted(HIDDEN))
def test_a_tool_hidden_in_a_place_the_old_extraction_missed_is_refused(
    proxy: ProxyHandle, emulator: Emulator, case: str
) -> None:
    operation, body, tool = HIDDEN[case]
    with pytest.raises(ClientError) as refused:
        if operation == "Converse":
            converse(proxy, **body)
        elif operation == "InvokeModel":
            invoke(proxy, body)
        else:
            proxy.client(CHAT).count_tokens(
                modelId=HAIKU, input={"invokeModel": {"body": json.dumps(body).encode()}}
            )
    message = denied(proxy, emulator, refused.value, "tool_not_allowed")
    assert f"tool {tool} is not approved" in message


def test_an_approved_tool_in_a_newly_read_place_is_forwarded_unchanged(
    proxy: ProxyHandle, emulator: Emulator
) -> None:
    fields = {"tools": [{"name": "get_weather", "input_schema": SCHEMA}]}
    answer = converse(proxy, toolConfig={"tools": [LOOKUP]}, additionalModelRequestFields=fields)
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    [seen] = emulator.requests()
    assert json.loads(base64.b64decode(seen["body_b64"]))["additionalModelRequestFields"] == fields


# --- tool shapes the proxy cannot read ---------------------------------------------

UNREADABLE: dict[str, tuple[str, Any, str]] = {
    # Class: a tool source outside the request. Anthropic's MCP connector
    # offers whatever the server lists; the proxy cannot see it.
    "converse mcp_servers": (
        "Converse",
        {"additionalModelRequestFields": {"mcp_servers": [{"type": "url", "url": "https://x"}]}},
        "additionalModelRequestFields.mcp_servers",
    ),
    # Class: a tool type the proxy does not know and that carries no name.
    "invoke unnamed typed tool": (
        "InvokeModel",
        {**ANTHROPIC, "tools": [{"name": "lookup"}, {"type": "code_execution_20250522"}]},
        "tools[1]",
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unreadable_tool_shape_is_refused(
    proxy: ProxyHandle, emulator: Emulator, case: str
) -> None:
    operation, body, place = UNREADABLE[case]
    with pytest.raises(ClientError) as refused:
        if operation == "Converse":
            converse(proxy, **body)
        else:
            invoke(proxy, body)
    message = denied(proxy, emulator, refused.value, "tools_unreadable")
    assert f"({place})" in message


# --- names that could be read two ways ------------------------------------------------

INVALID: dict[str, tuple[dict[str, Any], str]] = {
    # Class: a look-alike. "lookup" with a Cyrillic "а" is another tool to the
    # model, the same word to a person reading the allowlist.
    "non-ASCII look-alike": (
        {**ANTHROPIC, "tools": [{"name": "lookup\u0430", "input_schema": SCHEMA}]},
        "tools[0].name is not a valid tool name",
    ),
    "name with a space": (
        {**ANTHROPIC, "tools": [{"type": "function", "function": {"name": "get weather"}}]},
        "1-64 characters of a-z, A-Z, 0-9, _ and -",
    ),
    # Class: one tool with two names; which one the model sees is the provider's choice.
    "two names in one entry": (
        {**ANTHROPIC, "tools": [{"name": "lookup", "toolSpec": {"name": "shell_exec"}}]},
        "names itself in more than one place",
    ),
    # Class: two tools with one name, e.g. an approved name on an unapproved server tool.
    "one name declared twice": (
        {
            **ANTHROPIC,
            "tools": [{"name": "lookup", "input_schema": SCHEMA}],
            "toolConfig": {"tools": [LOOKUP]},
        },
        "'lookup' is declared twice",
    ),
    "more tools than the cap": (
        {**ANTHROPIC, "tools": [{"name": f"t{i}", "input_schema": SCHEMA} for i in range(129)]},
        "more than 128 tools",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_an_invalid_tool_name_is_a_400_that_says_which_rule(
    proxy: ProxyHandle, emulator: Emulator, case: str
) -> None:
    body, words = INVALID[case]
    with pytest.raises(ClientError) as refused:
        invoke(proxy, body)
    assert words in invalid(proxy, emulator, refused.value)
