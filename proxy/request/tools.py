"""Tool declarations: every place a Bedrock request can name a tool, read from the one parse.

Contract: ``declared_tools(operation, document)`` takes the operation and the
body's one JSON document (``request.body.read_document``) and returns a
``DeclaredTools``: the tool names the request declares, in order of
appearance, and the places that carry a tool shape the proxy cannot read. It
raises ``InvalidTools`` (400) for a name outside Bedrock's rules, a tool entry
that names itself in two places, a name declared twice, or more than
``MAX_TOOLS`` tools. It does no I/O.

Where tools are read (``<...>`` is a native body, below):

- Converse, ConverseStream: ``toolConfig.tools[]`` (``toolSpec.name``,
  ``systemTool.name``; a ``cachePoint`` entry is no tool),
  ``toolConfig.toolChoice.tool.name``, ``toolAddition.tool.name`` blocks in
  ``messages[].content[]``, and ``additionalModelRequestFields`` as
  ``<native>``, since Bedrock merges it into the provider's own request (that
  is how Anthropic computer-use, bash and text-editor tools are passed).
- InvokeModel, InvokeModelWithResponseStream: the body as ``<native>``.
- CountTokens: ``input.converse`` as a Converse body, and
  ``input.invokeModel.body`` (base64) decoded and parsed as an InvokeModel
  body.
- StartAsyncInvoke: ``modelInput`` as ``<native>``.

``<native>`` is read by shape, never by the model's provider: an ARN, an
application inference profile or a custom model names no provider, and a
body shaped for another provider than the model's must not hide its tools.
Its keys: ``tools`` and ``functions`` (lists of tool entries), ``toolConfig``
(Amazon Nova: as Converse's), ``tool_choice`` and ``function_call`` (a
choice), and ``mcp_servers`` (Anthropic's MCP connector: the tools come from
a server the proxy cannot see, so any such entry is unreadable). A
``toolConfig`` member other than ``tools`` and ``toolChoice`` is unreadable.

A tool entry is read by the one key that carries its name:

- ``toolSpec.name``: Converse, Amazon Nova;
- ``systemTool.name``: Converse system tools;
- ``function.name`` of a ``type: function`` entry: OpenAI chat completions
  (gpt-oss), Mistral, AI21 Jamba, DeepSeek, Qwen, Writer;
- ``name``: Anthropic custom tools (``{name, input_schema}``) and typed tools
  (``{"type": "bash_20250124", "name": "bash"}``, ``computer_20250124``,
  ``text_editor_*``, ``web_search_20250305``, ...), Cohere Command R
  (``{name, parameter_definitions}``), OpenAI's flat function shape;
- an entry that is only ``cachePoint`` marks a cache prefix and is no tool.

A choice (``toolChoice``, ``tool_choice``, ``function_call``) names a tool by
``tool.name``, ``function.name`` (with ``type: function``) or ``name``; a
string (``auto``, ``any``, ``none``, ``required``) names none. A named choice
and a ``toolAddition`` count as a declaration of that name: Bedrock requires
it to be declared anyway, and a name the proxy did not see declared must
still reach policy.

Security reasoning:

- Policy allows tools by name, so a tool the proxy does not see is a tool the
  policy never judged. Every place above is read, whatever the model, and a
  tool entry or list of a shape the proxy does not know is reported in
  ``unreadable``, never dropped: the policy then refuses the call rather than
  allow an unknown tool (a new server tool type without a name, an MCP
  toolset, a list that is not a list).
- A name is only an input to policy once it is one unambiguous string:
  Bedrock's ToolName, 1-64 of ``[a-zA-Z0-9_-]`` (botocore's service model; also
  OpenAI's function-name rule), so no case-folding, Unicode look-alike,
  whitespace or control character can make the policy and the model read two
  different tools. An entry with its name in two places (``toolSpec`` and
  ``name``, ``function.name`` and ``name``) and a name declared twice are
  refused for the same reason: which of the two the model sees is the
  provider's choice, not the proxy's.
- At most ``MAX_TOOLS`` names per request: OpenAI's documented limit of 128
  functions per request (Bedrock's service model sets no maximum). It bounds
  the OPA input and the task's running context.
- At most ``MAX_UNREADABLE_PLACES`` unreadable places, the first found, each
  at most ``MAX_PLACE_CHARS`` long: a place can name a caller's key, and a body
  can hold millions of unreadable entries, but the policy refuses on the first
  one, so more would only grow the OPA input, the deny reasons and memory.
- Not read: tools a model reads from its prompt text (Meta Llama and DeepSeek
  prompt templates), which are text like any other and classified as such;
  ``toolUse``/``tool_use`` blocks of earlier turns, which call a tool the
  request declares and declare none; ``toolRemoval`` blocks, which take one
  away; and ``anthropic_beta``, which unlocks tool types but declares no tool
  (the tools it unlocks are still listed in ``tools``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import InvalidRequest, clip
from proxy.request.body import read_document

MAX_TOOLS = 128
MAX_UNREADABLE_PLACES = 16
MAX_PLACE_CHARS = 256
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_NAME_RULE = "1-64 characters of a-z, A-Z, 0-9, _ and - (Bedrock's ToolName)"
_CONVERSE = frozenset({"Converse", "ConverseStream"})
_INVOKE = frozenset({"InvokeModel", "InvokeModelWithResponseStream"})
_CONFIG_KEYS = frozenset({"tools", "toolChoice"})


class InvalidTools(InvalidRequest):
    code = "invalid_tools"


@dataclass(frozen=True)
class DeclaredTools:
    """The tool names a request declares, and where it carries tools the proxy cannot read."""

    names: tuple[str, ...] = ()
    # Places in the body ("additionalModelRequestFields.mcp_servers"), never its content.
    unreadable: tuple[str, ...] = ()


def declared_tools(operation: str, document: Mapping[str, Any] | None) -> DeclaredTools:
    """Every tool the request declares, or InvalidTools; see the module docstring."""
    if not document:
        return DeclaredTools()
    reader = _Reader()
    if operation in _CONVERSE:
        reader.converse(document, "")
    elif operation in _INVOKE:
        reader.native(document, "")
    elif operation == "CountTokens":
        reader.count_tokens(document)
    elif operation == "StartAsyncInvoke":
        reader.native(document.get("modelInput"), "modelInput.")
    return reader.result()


@dataclass
class _Reader:
    declared: dict[str, str] = field(default_factory=dict)  # name -> where it was declared
    referenced: dict[str, None] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)

    def unread(self, where: str) -> None:
        if len(self.unreadable) < MAX_UNREADABLE_PLACES:
            self.unreadable.append(clip(where, MAX_PLACE_CHARS))

    def result(self) -> DeclaredTools:
        names = [*self.declared, *(n for n in self.referenced if n not in self.declared)]
        _check_count(len(names))
        return DeclaredTools(tuple(names), tuple(self.unreadable))

    def converse(self, document: Mapping[str, Any], where: str) -> None:
        self.tool_config(document.get("toolConfig"), f"{where}toolConfig")
        fields = document.get("additionalModelRequestFields")
        self.native(fields, f"{where}additionalModelRequestFields.")
        self.additions(document.get("messages"), f"{where}messages")

    def native(self, document: object, where: str) -> None:
        if not isinstance(document, Mapping):
            return
        self.tool_list(document.get("tools"), f"{where}tools")
        self.tool_list(document.get("functions"), f"{where}functions")
        self.tool_config(document.get("toolConfig"), f"{where}toolConfig")
        self.choice(document.get("tool_choice"), f"{where}tool_choice")
        self.choice(document.get("function_call"), f"{where}function_call")
        if document.get("mcp_servers") not in (None, []):
            self.unread(f"{where}mcp_servers")

    def count_tokens(self, document: Mapping[str, Any]) -> None:
        envelope = document.get("input")
        if not isinstance(envelope, Mapping):
            return
        if isinstance(envelope.get("converse"), Mapping):
            self.converse(envelope["converse"], "input.converse.")
        invoke = envelope.get("invokeModel")
        encoded = invoke.get("body") if isinstance(invoke, Mapping) else None
        if encoded is None:
            return
        where = "input.invokeModel.body"
        try:
            inner = base64.b64decode(encoded, validate=True)
        except (TypeError, ValueError, binascii.Error):
            # Bedrock's decoder may accept what this one does not (no padding, say):
            # what it would read is unknown, so it is unreadable, not empty.
            self.unread(where)
            return
        self.native(read_document("InvokeModel", inner), f"{where}.")

    def tool_config(self, config: object, where: str) -> None:
        if config is None:
            return
        if not isinstance(config, Mapping):
            self.unread(where)
            return
        self.tool_list(config.get("tools"), f"{where}.tools")
        self.choice(config.get("toolChoice"), f"{where}.toolChoice")
        # A member added to the tool configuration later may be a tool source.
        for key in config:
            if key not in _CONFIG_KEYS:
                self.unread(f"{where}.{key}")

    def tool_list(self, tools: object, where: str) -> None:
        if tools is None:
            return
        if not isinstance(tools, list):
            self.unread(where)
            return
        for index, entry in enumerate(tools):
            self.entry(entry, f"{where}[{index}]")

    def entry(self, entry: object, where: str) -> None:
        if not isinstance(entry, Mapping):
            self.unread(where)
            return
        found = _name_holders(entry, ("toolSpec", "systemTool"))
        if not found:
            if set(entry) != {"cachePoint"}:  # a cache point marks a prefix; it is no tool
                self.unread(where)
            return
        name = _one_name(found, where)
        if name in self.declared:
            raise InvalidTools(
                f"The tool name '{name}' is declared twice ({self.declared[name]} and {where}); "
                "which one the model sees is not defined"
            )
        self.declared[name] = where
        _check_count(len(self.declared))

    def choice(self, choice: object, where: str) -> None:
        if choice is None or isinstance(choice, str):
            return
        if not isinstance(choice, Mapping):
            self.unread(where)
            return
        found = _name_holders(choice, ("tool",))
        if found:
            self.referenced[_one_name(found, where)] = None

    def additions(self, messages: object, where: str) -> None:
        for m, message in enumerate(messages if isinstance(messages, list) else ()):
            content = message.get("content") if isinstance(message, Mapping) else None
            for c, block in enumerate(content if isinstance(content, list) else ()):
                if isinstance(block, Mapping) and "toolAddition" in block:
                    self.addition(block["toolAddition"], f"{where}[{m}].content[{c}].toolAddition")

    def addition(self, addition: object, where: str) -> None:
        tool = addition.get("tool") if isinstance(addition, Mapping) else None
        if not isinstance(tool, Mapping) or "serverName" in tool:
            # A tool of an MCP server: the proxy cannot see what the server offers.
            self.unread(where)
            return
        self.referenced[_valid_name(tool.get("name"), f"{where}.tool.name")] = None


def _name_holders(entry: Mapping[str, Any], wrappers: tuple[str, ...]) -> dict[str, object]:
    """Each place in ``entry`` that carries a tool name: its path -> the object holding it."""
    found: dict[str, object] = {key: entry[key] for key in wrappers if key in entry}
    if entry.get("type") == "function" and "function" in entry:
        found["function"] = entry["function"]
    if "name" in entry:
        found[""] = entry
    return found


def _one_name(found: dict[str, object], where: str) -> str:
    if len(found) > 1:
        places = ", ".join(f"{where}.{key}.name" if key else f"{where}.name" for key in found)
        raise InvalidTools(
            f"The tool at {where} names itself in more than one place ({places}); "
            "the proxy and the model could read different names"
        )
    [(key, holder)] = found.items()
    name = holder.get("name") if isinstance(holder, Mapping) else None
    return _valid_name(name, f"{where}.{key}.name" if key else f"{where}.name")


def _valid_name(name: object, where: str) -> str:
    if not isinstance(name, str) or _TOOL_NAME.fullmatch(name) is None:
        problem = "is missing" if name is None else "is not a valid tool name"
        raise InvalidTools(f"The tool name at {where} {problem}: a tool name is {_NAME_RULE}")
    return name


def _check_count(count: int) -> None:
    if count > MAX_TOOLS:
        raise InvalidTools(f"The request declares more than {MAX_TOOLS} tools")
