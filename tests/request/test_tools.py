from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.errors import InvalidRequest
from proxy.request.body import AmbiguousBody
from proxy.request.tools import (
    MAX_PLACE_CHARS,
    MAX_TOOLS,
    MAX_UNREADABLE_PLACES,
    DeclaredTools,
    InvalidTools,
    declared_tools,
)

SCHEMA = {"type": "object", "properties": {}}


def spec(name: str) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "inputSchema": {"json": SCHEMA}}}


def function(name: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": SCHEMA}}


def b64(document: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(document).encode()).decode()


MESSAGES = [{"role": "user", "content": [{"text": "hi"}]}]

# provider or place -> (operation, document, names, unreadable places)
KNOWN: dict[str, tuple[str, dict[str, Any], tuple[str, ...], tuple[str, ...]]] = {
    "converse toolSpec": (
        "Converse",
        {"messages": MESSAGES, "toolConfig": {"tools": [spec("lookup"), spec("get_weather")]}},
        ("lookup", "get_weather"),
        (),
    ),
    "converse cachePoint is no tool": (
        "ConverseStream",
        {"toolConfig": {"tools": [spec("lookup"), {"cachePoint": {"type": "default"}}]}},
        ("lookup",),
        (),
    ),
    "converse systemTool": (
        "Converse",
        {"toolConfig": {"tools": [{"systemTool": {"name": "nova_grounding"}}]}},
        ("nova_grounding",),
        (),
    ),
    "converse toolChoice names a declared tool": (
        "Converse",
        {"toolConfig": {"tools": [spec("lookup")], "toolChoice": {"tool": {"name": "lookup"}}}},
        ("lookup",),
        (),
    ),
    "converse toolChoice auto and any name none": (
        "Converse",
        {"toolConfig": {"tools": [spec("lookup")], "toolChoice": {"any": {}}}},
        ("lookup",),
        (),
    ),
    "converse toolChoice of an undeclared tool declares it": (
        "Converse",
        {"toolConfig": {"tools": [spec("lookup")], "toolChoice": {"tool": {"name": "shell"}}}},
        ("lookup", "shell"),
        (),
    ),
    "converse toolAddition block": (
        "Converse",
        {
            "toolConfig": {"tools": [spec("lookup")]},
            "messages": [{"role": "user", "content": [{"toolAddition": {"tool": {"name": "x"}}}]}],
        },
        ("lookup", "x"),
        (),
    ),
    "converse additionalModelRequestFields: Anthropic computer use": (
        "Converse",
        {
            "toolConfig": {"tools": [spec("lookup")]},
            "additionalModelRequestFields": {
                "tools": [
                    {
                        "type": "computer_20250124",
                        "name": "computer",
                        "display_height_px": 768,
                        "display_width_px": 1024,
                    },
                    {"type": "bash_20250124", "name": "bash"},
                    {"type": "text_editor_20250124", "name": "str_replace_editor"},
                ],
                "anthropic_beta": ["computer-use-2025-01-24"],
            },
        },
        ("lookup", "computer", "bash", "str_replace_editor"),
        (),
    ),
    "converse additionalModelRequestFields: OpenAI functions": (
        "Converse",
        {"additionalModelRequestFields": {"tools": [function("f")], "tool_choice": "auto"}},
        ("f",),
        (),
    ),
    "anthropic custom tool": (
        "InvokeModel",
        {
            "anthropic_version": "bedrock-2023-05-31",
            "messages": MESSAGES,
            "tools": [{"name": "lookup", "description": "d", "input_schema": SCHEMA}],
        },
        ("lookup",),
        (),
    ),
    "anthropic server and client tools": (
        "InvokeModelWithResponseStream",
        {
            "tools": [
                {"type": "bash_20250124", "name": "bash"},
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
                {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                {"type": "custom", "name": "lookup", "input_schema": SCHEMA},
            ],
            "tool_choice": {"type": "tool", "name": "bash"},
        },
        ("bash", "web_search", "str_replace_based_edit_tool", "lookup"),
        (),
    ),
    "anthropic tool_choice any": (
        "InvokeModel",
        {"tools": [{"name": "lookup", "input_schema": SCHEMA}], "tool_choice": {"type": "any"}},
        ("lookup",),
        (),
    ),
    "anthropic mcp connector": (
        "InvokeModel",
        {"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]},
        (),
        ("mcp_servers",),
    ),
    "anthropic mcp toolset has no name": (
        "InvokeModel",
        {"tools": [{"type": "mcp_toolset", "mcp_server_name": "x"}]},
        (),
        ("tools[0]",),
    ),
    "openai gpt-oss function": (
        "InvokeModel",
        {
            "messages": MESSAGES,
            "tools": [function("get_weather")],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
        ("get_weather",),
        (),
    ),
    "openai tool_choice required": (
        "InvokeModel",
        {"tools": [function("a")], "tool_choice": "required"},
        ("a",),
        (),
    ),
    "openai flat function": (
        "InvokeModel",
        {"tools": [{"type": "function", "name": "a", "parameters": SCHEMA}]},
        ("a",),
        (),
    ),
    "openai legacy functions": (
        "InvokeModel",
        {"functions": [{"name": "a", "parameters": SCHEMA}], "function_call": {"name": "a"}},
        ("a",),
        (),
    ),
    "openai hosted tool without a name": (
        "InvokeModel",
        {"tools": [{"type": "web_search_preview"}]},
        (),
        ("tools[0]",),
    ),
    "mistral": (
        "InvokeModel",
        {"messages": MESSAGES, "tools": [function("search")], "tool_choice": "any"},
        ("search",),
        (),
    ),
    "cohere command r": (
        "InvokeModel",
        {
            "message": "hi",
            "tools": [
                {
                    "name": "query_daily_sales_report",
                    "description": "d",
                    "parameter_definitions": {"day": {"type": "str", "required": True}},
                }
            ],
            "tool_results": [{"call": {"name": "other", "parameters": {}}, "outputs": []}],
        },
        ("query_daily_sales_report",),
        (),
    ),
    "amazon nova": (
        "InvokeModel",
        {
            "messages": MESSAGES,
            "toolConfig": {
                "tools": [spec("top_song")],
                "toolChoice": {"tool": {"name": "top_song"}},
            },
        },
        ("top_song",),
        (),
    ),
    "nova and anthropic shapes in one body are both read": (
        "InvokeModel",
        {"toolConfig": {"tools": [spec("a")]}, "tools": [{"name": "b", "input_schema": SCHEMA}]},
        ("b", "a"),
        (),
    ),
    "meta llama: tools in the prompt are text": (
        "InvokeModel",
        {"prompt": '<|begin_of_text|>{"name": "shell"}', "max_gen_len": 10},
        (),
        (),
    ),
    "count tokens converse": (
        "CountTokens",
        {
            "input": {
                "converse": {
                    "messages": MESSAGES,
                    "toolConfig": {"tools": [spec("lookup")]},
                    "additionalModelRequestFields": {
                        "tools": [{"type": "bash_20250124", "name": "bash"}]
                    },
                }
            }
        },
        ("lookup", "bash"),
        (),
    ),
    "count tokens invokeModel": (
        "CountTokens",
        {"input": {"invokeModel": {"body": b64({"tools": [function("f"), {"name": "g"}]})}}},
        ("f", "g"),
        (),
    ),
    "count tokens invokeModel body not base64": (
        "CountTokens",
        {"input": {"invokeModel": {"body": "e30"}}},
        (),
        ("input.invokeModel.body",),
    ),
    "count tokens invokeModel body not JSON": (
        "CountTokens",
        {"input": {"invokeModel": {"body": base64.b64encode(b"plain text").decode()}}},
        (),
        (),
    ),
    "start async invoke modelInput": (
        "StartAsyncInvoke",
        {"modelId": "m", "modelInput": {"tools": [{"name": "a"}]}, "outputDataConfig": {}},
        ("a",),
        (),
    ),
    "apply guardrail has no tools": ("ApplyGuardrail", {"tools": [{"name": "a"}]}, (), ()),
    "converse ignores a top-level native tools key": (
        "Converse",
        {"tools": [{"name": "a"}]},
        (),
        (),
    ),
    "no body": ("InvokeModel", {}, (), ()),
    "empty lists and nulls": (
        "InvokeModel",
        {"tools": [], "tool_choice": None, "toolConfig": None, "mcp_servers": []},
        (),
        (),
    ),
}


@pytest.mark.parametrize("case", sorted(KNOWN))
def test_every_known_shape_is_read(case: str) -> None:
    operation, document, names, unreadable = KNOWN[case]
    assert declared_tools(operation, document) == DeclaredTools(names, unreadable)


def test_a_non_json_invoke_body_declares_nothing() -> None:
    assert declared_tools("InvokeModel", None) == DeclaredTools()


# place -> (operation, document, unreadable places)
UNREADABLE: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "tools not a list": ("InvokeModel", {"tools": {"a": {"name": "a"}}}, ("tools",)),
    "entry not an object": ("InvokeModel", {"tools": ["lookup"]}, ("tools[0]",)),
    "unknown converse union member": (
        "Converse",
        {"toolConfig": {"tools": [spec("a"), {"mcpServer": {"url": "x"}}]}},
        ("toolConfig.tools[1]",),
    ),
    "cachePoint with something else": (
        "Converse",
        {"toolConfig": {"tools": [{"cachePoint": {}, "extra": {}}]}},
        ("toolConfig.tools[0]",),
    ),
    "function of another type": (
        "InvokeModel",
        {"tools": [{"type": "graph", "function": {"graph_ids": ["g"]}}]},
        ("tools[0]",),
    ),
    "toolConfig not an object": ("Converse", {"toolConfig": ["x"]}, ("toolConfig",)),
    "unknown toolConfig member": (
        "InvokeModel",
        {"toolConfig": {"tools": [spec("a")], "mcpServers": [{}]}},
        ("toolConfig.mcpServers",),
    ),
    "choice of an unknown kind": ("InvokeModel", {"tool_choice": ["a"]}, ("tool_choice",)),
    "MCP server tool added in a message": (
        "Converse",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"toolAddition": {"tool": {"name": "x", "serverName": "s"}}}],
                }
            ]
        },
        ("messages[0].content[0].toolAddition",),
    ),
    "nested in additionalModelRequestFields": (
        "Converse",
        {"additionalModelRequestFields": {"tools": [{"type": "code_execution_20250522"}]}},
        ("additionalModelRequestFields.tools[0]",),
    ),
    "nested in count tokens": (
        "CountTokens",
        {"input": {"converse": {"toolConfig": {"tools": [{"x": {}}]}}}},
        ("input.converse.toolConfig.tools[0]",),
    ),
    "nested in a count tokens invoke body": (
        "CountTokens",
        {"input": {"invokeModel": {"body": b64({"mcp_servers": [{}]})}}},
        ("input.invokeModel.body.mcp_servers",),
    ),
}


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_an_unknown_tool_shape_is_reported_not_dropped(case: str) -> None:
    operation, document, places = UNREADABLE[case]
    assert declared_tools(operation, document).unreadable == places


LONG_KEY = "k" * 1_000_000


@pytest.mark.parametrize(
    ("operation", "document", "first"),
    [
        # A million entries that are no tool: the first places only.
        ("InvokeModel", {"tools": [0] * 1_000_000}, "tools[0]"),
        ("Converse", {"toolConfig": {f"m{i}": 1 for i in range(50_000)}}, "toolConfig.m0"),
        # A caller's key names the place: cut, and the cut says so.
        (
            "Converse",
            {"toolConfig": {LONG_KEY: 1}},
            "toolConfig." + "k" * 226 + "...[+999774 chars]",
        ),
    ],
)
def test_unreadable_places_are_bounded(
    operation: str, document: dict[str, Any], first: str
) -> None:
    places = declared_tools(operation, document).unreadable
    assert places[0] == first
    assert 1 <= len(places) <= MAX_UNREADABLE_PLACES
    assert all(len(place) <= MAX_PLACE_CHARS for place in places)


# case -> (operation, document, words in the message)
REFUSED: dict[str, tuple[str, dict[str, Any], str]] = {
    "name with a space": ("InvokeModel", {"tools": [{"name": "a b"}]}, "tools[0].name"),
    "name too long": ("Converse", {"toolConfig": {"tools": [spec("a" * 65)]}}, "1-64"),
    "non-ASCII look-alike": ("InvokeModel", {"tools": [function("lookup\u0430")]}, "function.name"),
    "trailing newline": ("InvokeModel", {"tools": [{"name": "lookup\n"}]}, "not a valid tool name"),
    "empty name": ("InvokeModel", {"tools": [{"name": ""}]}, "not a valid tool name"),
    "name not a string": ("InvokeModel", {"tools": [{"name": 7}]}, "tools[0].name"),
    "toolSpec without a name": (
        "Converse",
        {"toolConfig": {"tools": [{"toolSpec": {}}]}},
        "missing",
    ),
    "function without a name": (
        "InvokeModel",
        {"tools": [{"type": "function", "function": {}}]},
        "tools[0].function.name is missing",
    ),
    "invalid choice": (
        "InvokeModel",
        {"tool_choice": {"type": "tool", "name": "../x"}},
        "tool_choice.name",
    ),
    "invalid addition": (
        "Converse",
        {"messages": [{"role": "user", "content": [{"toolAddition": {"tool": {"name": "a.b"}}}]}]},
        "toolAddition.tool.name",
    ),
    "two names in one entry": (
        "InvokeModel",
        {"tools": [{"type": "function", "function": {"name": "a"}, "name": "b"}]},
        "more than one place (tools[0].function.name, tools[0].name)",
    ),
    "toolSpec and systemTool in one entry": (
        "Converse",
        {"toolConfig": {"tools": [{"toolSpec": {"name": "a"}, "systemTool": {"name": "b"}}]}},
        "more than one place",
    ),
    "two names in one choice": (
        "InvokeModel",
        {"tool_choice": {"type": "function", "function": {"name": "a"}, "name": "b"}},
        "more than one place",
    ),
    "duplicate in one list": (
        "InvokeModel",
        {"tools": [{"name": "a"}, function("a")]},
        "'a' is declared twice (tools[0] and tools[1])",
    ),
    "duplicate across places": (
        "Converse",
        {
            "toolConfig": {"tools": [spec("bash")]},
            "additionalModelRequestFields": {"tools": [{"type": "bash_20250124", "name": "bash"}]},
        },
        "declared twice (toolConfig.tools[0] and additionalModelRequestFields.tools[0])",
    ),
    "too many": (
        "InvokeModel",
        {"tools": [{"name": f"t{i}"} for i in range(MAX_TOOLS + 1)]},
        f"more than {MAX_TOOLS} tools",
    ),
    "too many with a choice": (
        "InvokeModel",
        {
            "tools": [{"name": f"t{i}"} for i in range(MAX_TOOLS)],
            "tool_choice": {"type": "tool", "name": "extra"},
        },
        f"more than {MAX_TOOLS} tools",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_name_outside_the_rules_is_a_400_that_says_which(case: str) -> None:
    operation, document, words = REFUSED[case]
    with pytest.raises(InvalidTools) as refused:
        declared_tools(operation, document)
    assert refused.value.status == 400
    assert refused.value.error_type == "ValidationException"
    assert refused.value.code == "invalid_tools"
    assert words in refused.value.message


def test_the_cap_is_inclusive() -> None:
    document = {"tools": [{"name": f"t{i}"} for i in range(MAX_TOOLS)]}
    assert len(declared_tools("InvokeModel", document).names) == MAX_TOOLS


def test_an_invalid_name_is_never_echoed() -> None:
    with pytest.raises(InvalidTools) as refused:
        declared_tools("InvokeModel", {"tools": [{"name": "<script>" + "x" * 10_000}]})
    assert "<script>" not in refused.value.message
    assert len(refused.value.message) < 200


def test_an_ambiguous_count_tokens_invoke_body_is_refused_like_any_body() -> None:
    inner = base64.b64encode(b'{"tools": [], "tools": [{"name": "a"}]}').decode()
    with pytest.raises(AmbiguousBody):
        declared_tools("CountTokens", {"input": {"invokeModel": {"body": inner}}})


# --- the extraction this module replaced ---------------------------------------
# ``pipeline._tool_names`` before the parity work, verbatim: each case below was
# forwarded with a tool the workload's allowlist never saw.


def _legacy_tool_names(document: dict[str, Any] | None) -> tuple[str, ...]:
    if not document:
        return ()
    tools = (
        document.get("toolConfig", {}).get("tools")
        if isinstance(document.get("toolConfig"), dict)
        else document.get("tools")
    )
    names: list[str] = []
    for tool in tools if isinstance(tools, list) else ():
        spec = tool.get("toolSpec", tool) if isinstance(tool, dict) else None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            names.append(spec["name"])
    return tuple(names)


# bypass -> (operation, document, the hidden tool)
BYPASSES: dict[str, tuple[str, dict[str, Any], str]] = {
    "converse additionalModelRequestFields": (
        "Converse",
        {
            "toolConfig": {"tools": [spec("lookup")]},
            "additionalModelRequestFields": {"tools": [{"type": "bash_20250124", "name": "bash"}]},
        },
        "bash",
    ),
    "invoke anthropic server tool behind a toolConfig": (
        "InvokeModel",
        {"toolConfig": {}, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "web_search",
    ),
    "invoke openai function": ("InvokeModel", {"tools": [function("shell_exec")]}, "shell_exec"),
    "tool choice of an undeclared tool": (
        "InvokeModel",
        {"tools": [], "tool_choice": {"type": "tool", "name": "shell_exec"}},
        "shell_exec",
    ),
    "count tokens invoke body": (
        "CountTokens",
        {"input": {"invokeModel": {"body": b64({"tools": [{"name": "shell_exec"}]})}}},
        "shell_exec",
    ),
    "count tokens converse": (
        "CountTokens",
        {"input": {"converse": {"toolConfig": {"tools": [spec("shell_exec")]}}}},
        "shell_exec",
    ),
    "converse system tool": (
        "Converse",
        {"toolConfig": {"tools": [{"systemTool": {"name": "nova_grounding"}}]}},
        "nova_grounding",
    ),
}


@pytest.mark.parametrize("case", sorted(BYPASSES))
def test_tools_the_old_extraction_missed_are_found(case: str) -> None:
    operation, document, hidden = BYPASSES[case]
    assert hidden not in _legacy_tool_names(document)
    assert hidden in declared_tools(operation, document).names


# --- properties -------------------------------------------------------------------

NAMES = st.from_regex(r"[a-zA-Z0-9_-]{1,64}", fullmatch=True)
# Each known shape of a tool entry, built from its name.
SHAPES = [
    spec,
    lambda n: {"systemTool": {"name": n}},
    function,
    lambda n: {"type": "function", "name": n, "parameters": SCHEMA},
    lambda n: {"name": n, "input_schema": SCHEMA},
    lambda n: {"type": "bash_20250124", "name": n},
    lambda n: {"name": n, "parameter_definitions": {}},
]
# Each place a list of tool entries can sit: operation and a body holding ``tools``.
PLACES = [
    ("Converse", lambda tools: {"toolConfig": {"tools": tools}}),
    ("Converse", lambda tools: {"additionalModelRequestFields": {"tools": tools}}),
    ("InvokeModel", lambda tools: {"tools": tools}),
    ("InvokeModel", lambda tools: {"toolConfig": {"tools": tools}}),
    ("InvokeModel", lambda tools: {"functions": tools}),
    ("CountTokens", lambda tools: {"input": {"converse": {"toolConfig": {"tools": tools}}}}),
    ("CountTokens", lambda tools: {"input": {"invokeModel": {"body": b64({"tools": tools})}}}),
    ("StartAsyncInvoke", lambda tools: {"modelInput": {"tools": tools}}),
]


@given(
    names=st.lists(NAMES, max_size=MAX_TOOLS, unique=True),
    shapes=st.lists(st.sampled_from(SHAPES), min_size=MAX_TOOLS, max_size=MAX_TOOLS),
    place=st.sampled_from(PLACES),
    cache_points=st.lists(st.integers(0, MAX_TOOLS), max_size=3),
)
def test_every_valid_tool_in_any_known_shape_and_place_is_found(
    names: list[str], shapes: list[Any], place: Any, cache_points: list[int]
) -> None:
    tools = [shape(name) for name, shape in zip(names, shapes, strict=False)]
    for index in cache_points:
        tools.insert(min(index, len(tools)), {"cachePoint": {"type": "default"}})
    operation, body = place
    assert declared_tools(operation, body(tools)) == DeclaredTools(tuple(names), ())


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
NAME_KEYS = {"name", "toolSpec", "systemTool", "function"}


@given(
    entry=st.dictionaries(
        st.text(max_size=10).filter(lambda k: k not in NAME_KEYS), JSON, min_size=1, max_size=4
    ).filter(lambda e: set(e) != {"cachePoint"}),
    place=st.sampled_from(PLACES),
    before=st.lists(NAMES, max_size=3, unique=True),
)
def test_an_unknown_shape_under_a_tools_key_is_unreadable_never_dropped(
    entry: dict[str, Any], place: Any, before: list[str]
) -> None:
    operation, body = place
    result = declared_tools(operation, body([{"name": n} for n in before] + [entry]))
    assert len(result.unreadable) == 1
    assert result.unreadable[0].endswith(f"[{len(before)}]")
    assert result.names == tuple(before)


@given(name=st.text(max_size=80).filter(lambda n: re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n) is None))
def test_any_name_outside_the_rule_is_refused(name: str) -> None:
    with pytest.raises(InvalidTools):
        declared_tools("InvokeModel", {"tools": [{"name": name}]})


@given(name=NAMES, first=st.sampled_from(PLACES[:2]), second=st.sampled_from(SHAPES))
def test_a_name_declared_twice_is_refused(name: str, first: Any, second: Any) -> None:
    operation, body = first
    document = body([spec(name), second(name)])
    with pytest.raises(InvalidTools, match="declared twice"):
        declared_tools(operation, document)


@given(
    document=st.dictionaries(
        st.sampled_from(
            [
                "tools",
                "functions",
                "toolConfig",
                "tool_choice",
                "function_call",
                "mcp_servers",
                "additionalModelRequestFields",
                "messages",
                "input",
                "modelInput",
            ]
        ),
        JSON,
        max_size=4,
    ),
    operation=st.sampled_from(
        ["Converse", "ConverseStream", "InvokeModel", "CountTokens", "StartAsyncInvoke"]
    ),
)
def test_any_document_gives_a_result_or_a_400(document: dict[str, Any], operation: str) -> None:
    try:
        result = declared_tools(operation, document)
    except InvalidRequest as refused:
        assert refused.status == 400
        return
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n) for n in result.names)
    assert len(set(result.names)) == len(result.names) <= MAX_TOOLS
