package bedrock.tasks_test

import data.bedrock.authz

chat := "spiffe://example.org/ns/demo/sa/chat"

sonnet := "anthropic.claude-3-5-sonnet-20240620-v1:0"

haiku := "anthropic.claude-3-haiku-20240307-v1:0"

task := {
	"id": "task-1", "purpose": "p", "opened_by": chat, "ttl_seconds": 600,
	"calls": 0, "max_calls": 10, "models": [], "classification": "confidential",
	"tools": ["lookup"], "models_used": [], "classifications_seen": [], "tools_requested": [],
}

call(overrides, task_overrides, level) := {
	"identity": {"spiffe_id": chat, "trust_domain": "example.org"},
	"request": object.union(
		{
			"operation": "Converse", "region": "us-east-1", "account": "123456789012",
			"model": {"id": haiku, "kind": "foundation-model"}, "tools": [],
		},
		overrides,
	),
	"classification": {"declared": level, "detected": "public", "effective": level, "findings": []},
	"task": object.union(task, task_overrides),
}

codes(inp) := {split(r, ":")[0] | some r in reasons} if {
	reasons := authz.decision.reasons with input as inp
}

open_input(task_overrides) := call({"operation": "OpenTask", "model": null}, task_overrides, "internal")

test_open_task_within_bounds_is_allowed if {
	authz.decision.allow with input as open_input({})
}

test_open_task_bounds_are_invalid_reasons if {
	codes(open_input({"ttl_seconds": 7200})) == {"invalid_ttl"}
	codes(open_input({"max_calls": 5000})) == {"invalid_max_calls"}
	codes(open_input({"models": ["amazon.nova-pro-v1:0"]})) == {"invalid_task_models"}
}

test_call_in_task_is_allowed if {
	authz.decision.allow with input as call({}, {"calls": 3}, "internal")
}

test_budget if {
	codes(call({}, {"calls": 1000}, "internal")) == {"task_budget_exhausted"}
}

test_someone_elses_task if {
	codes(call({}, {"opened_by": "spiffe://example.org/ns/demo/sa/batch"}, "internal")) == {"task_not_owned"}
}

test_task_models_limit_the_call if {
	codes(call({}, {"models": [sonnet]}, "internal")) == {"task_model_not_allowed"}
	authz.decision.allow with input as call({"model": {"id": sonnet}}, {"models": [sonnet]}, "internal")
}

test_taint_allows_only_models_cleared_for_restricted if {
	tainted := {"classifications_seen": ["internal", "restricted"], "classification": "restricted"}
	codes(call({}, tainted, "public")) == {"task_tainted"}
	not "task_tainted" in codes(call({"model": {"id": sonnet}}, tainted, "public"))
	not "task_tainted" in codes(call({}, {"classifications_seen": ["confidential"]}, "public"))
}

test_tools_must_be_on_the_task_list if {
	authz.decision.allow with input as call({"tools": ["lookup"]}, {}, "internal")
	codes(call({"tools": ["lookup", "get_weather"]}, {}, "internal")) == {"task_tool_not_allowed"}
}

# The workload rule covers calls in a task too: a task can only narrow its tools.
test_unreadable_tools_in_a_task if {
	codes(call({"tools": ["lookup"], "tools_unreadable": ["tools[1]"]}, {}, "internal")) == {"tools_unreadable"}
}

test_classification_above_the_task if {
	"task_classification_exceeded" in codes(call({}, {"classification": "internal"}, "confidential"))
}

test_taint_reads_a_profile_by_its_foundation_model if {
	tainted := {"classifications_seen": ["restricted"], "classification": "restricted"}
	not "task_tainted" in codes(call(via_profile(sonnet), tainted, "public"))
	"task_tainted" in codes(call(via_profile(haiku), tainted, "public"))
}

via_profile(foundation_id) := {"model": {
	"id": concat("", ["us.", foundation_id]), "kind": "inference-profile",
	"provider": "anthropic", "geo": "us", "foundation_id": foundation_id,
}}

# call_budgets keys resolve like registry keys: exact, else the longest "/*" pattern.
budgets := {
	"spiffe://example.org/ns/demo/*": 5,
	"spiffe://example.org/ns/demo/sa/*": 3,
	"spiffe://example.org/ns/demo/sa/batch": 1,
}

test_call_budget_through_a_pattern[name] if {
	some name, tc in {
		"the longest pattern": [chat, 3],
		"an exact key wins": ["spiffe://example.org/ns/demo/sa/batch", 1],
		"a shorter pattern": ["spiffe://example.org/ns/demo/other", 5],
		"segment boundary: the default": ["spiffe://example.org/ns/demo-evil/sa/chat", 1000],
	}
	budget := authz.call_budget with data.bedrock.tasks.call_budgets as budgets
		with input as {"identity": {"spiffe_id": tc[0]}}
	budget == tc[1]
}

test_budget_of_a_pattern_exhausts_the_task if {
	codes(call({}, {"calls": 3}, "internal")) == {"task_budget_exhausted"} with data.bedrock.tasks.call_budgets as budgets
	not "task_budget_exhausted" in codes(call({}, {"calls": 2}, "internal")) with data.bedrock.tasks.call_budgets as budgets
}
