"""Registry parity end to end: what the proxy reads from a workload's entry is
the entry the authorization rule resolved, wildcard registrations included.

A workload registered only by a whole-segment pattern
(``spiffe://example.org/ns/analysts/*``) with ``default_classification:
confidential`` sends calls without ``X-Data-Classification``: its audit
records must say ``declared: confidential``, not the global default.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HAIKU, POLICIES, ProxyFactory, ProxyHandle

TD = "spiffe://example.org"
PATTERN = f"{TD}/ns/analysts/*"
REPORTER = f"{TD}/ns/analysts/sa/reporter"  # registered by the pattern only
INTERN = f"{TD}/ns/analysts/sa/intern"  # an exact entry without a default: exact wins
MESSAGES = [{"role": "user", "content": [{"text": "summarise the quarter"}]}]


def _entry(team: str, **fields: object) -> dict[str, object]:
    return {
        "owner": {"team": team, "contact": f"{team}@example.org"},
        "operations": ["Converse"],
        "models": [HAIKU],
        "geos": [],
        "regions": ["us-east-1"],
        "accounts": ["123456789012"],
        "max_classification": "confidential",
        "role_arn": "arn:aws:iam::123456789012:role/bedrock-runtime-analysts",
        "session_seconds": 900,
        **fields,
    }


@dataclass
class Stack:
    proxy: ProxyHandle
    data_file: Path

    def converse(self, spiffe_id: str, level: str | None = None) -> dict[str, Any]:
        """One Converse call; the classification of its audit record."""
        client = self.proxy.client(spiffe_id)
        if level is not None:

            def add(request: Any, **_: Any) -> None:
                request.headers["X-Data-Classification"] = level

            client.meta.events.register_first("before-sign.bedrock-runtime.Converse", add)
        try:
            response = client.converse(modelId=HAIKU, messages=MESSAGES)
        finally:
            self.proxy.close_clients()
        [record] = self.proxy.request_of(response["ResponseMetadata"]["RequestId"])[:1]
        classification: dict[str, Any] = record["classification"]
        return classification


@pytest.fixture
def stack(
    proxy_factory: ProxyFactory, start_opa: Any, emulator: Any, tmp_path: Path
) -> Iterator[Stack]:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    data_file = policies / "bedrock" / "data.json"
    data = json.loads(data_file.read_text())
    data["workloads"][PATTERN] = _entry("team-analysts", default_classification="confidential")
    data["workloads"][INTERN] = _entry("team-interns")
    data_file.write_text(json.dumps(data))
    _, opa_url = start_opa(policies)
    yield Stack(proxy_factory(opa_url, opa_timeout_ms=5000), data_file)


def test_a_pattern_registration_gives_its_default_classification(stack: Stack) -> None:
    classification = stack.converse(REPORTER)
    assert classification["declared"] == "confidential"
    assert classification["effective"] == "confidential"
    assert classification["defaulted"] is True


def test_a_declared_level_still_wins_over_the_pattern_default(stack: Stack) -> None:
    classification = stack.converse(REPORTER, level="public")
    assert (classification["declared"], classification["defaulted"]) == ("public", False)


def test_an_exact_entry_shadows_the_pattern_as_authorization_does(stack: Stack) -> None:
    # The intern's own entry has no default: the pattern's is not borrowed.
    classification = stack.converse(INTERN)
    assert (classification["declared"], classification["defaulted"]) == ("internal", True)


def test_an_edited_default_applies_once_the_revision_changes(stack: Stack) -> None:
    assert stack.converse(REPORTER)["declared"] == "confidential"
    data = json.loads(stack.data_file.read_text())
    data["workloads"][PATTERN]["default_classification"] = "internal"
    stack.data_file.write_text(json.dumps(data))
    # OPA reloads on the edit; the proxy's answer is cached per policy revision,
    # polled every 2 s.
    deadline = time.monotonic() + 20
    while stack.converse(REPORTER)["declared"] != "internal":
        assert time.monotonic() < deadline, "the edited default never applied"
        time.sleep(0.2)
