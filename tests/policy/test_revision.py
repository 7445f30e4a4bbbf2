"""The policy revision is a digest of what OPA loaded: modules and data, not rules."""

from __future__ import annotations

from typing import Any

from proxy.policy.revision import revision_digest


def module(path: list[str], raw: str) -> dict[str, Any]:
    terms = [{"type": "var", "value": "data"}] + [{"type": "string", "value": p} for p in path]
    return {"id": "/".join(path) + ".rego", "raw": raw, "ast": {"package": {"path": terms}}}


AUTHZ = module(["bedrock", "authz"], "package bedrock.authz\ndecision := 1")
DATA = {"bedrock": {"workloads": {"a": 1}, "authz": {"decision": 1}}}


def test_same_modules_and_data_same_revision() -> None:
    assert revision_digest([AUTHZ], DATA) == revision_digest([AUTHZ], DATA)
    assert revision_digest([AUTHZ], DATA).startswith("sha256:")


def test_an_edited_module_changes_the_revision() -> None:
    edited = {**AUTHZ, "raw": AUTHZ["raw"] + "\nother := 2"}
    assert revision_digest([edited], DATA) != revision_digest([AUTHZ], DATA)


def test_edited_data_changes_the_revision() -> None:
    edited = {"bedrock": {"workloads": {"a": 2}, "authz": {"decision": 1}}}
    assert revision_digest([AUTHZ], edited) != revision_digest([AUTHZ], DATA)


def test_evaluated_rules_do_not_count_only_their_source() -> None:
    # A rule's value follows from modules and data; hashing it again adds nothing
    # and would make the digest depend on evaluation without input.
    other_value = {"bedrock": {"workloads": {"a": 1}, "authz": {"decision": 99}}}
    assert revision_digest([AUTHZ], other_value) == revision_digest([AUTHZ], DATA)


def test_module_path_does_not_matter() -> None:
    moved = {**AUTHZ, "id": "/abs/elsewhere/authz.rego"}
    assert revision_digest([moved], DATA) == revision_digest([AUTHZ], DATA)
