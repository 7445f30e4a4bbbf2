package bedrock.authz_test

import data.bedrock.authz

# Tests run against the real data.json (the demo registry); a case may swap
# one registry entry to exercise a rule the demo data does not trigger.

account := "123456789012"

chat := "spiffe://example.org/ns/demo/sa/chat"

batch := "spiffe://example.org/ns/demo/sa/batch"

orphan := "spiffe://example.org/ns/demo/sa/orphan"

admin := "spiffe://example.org/ns/platform/sa/admin"

evil := "spiffe://evil.org/ns/demo/sa/chat"

haiku := "anthropic.claude-3-haiku-20240307-v1:0"

sonnet := "anthropic.claude-3-5-sonnet-20240620-v1:0"

titan := "amazon.titan-text-express-v1"

sonnet_profile_arn := "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"

chat_entry := data.bedrock.workloads[chat]

chat_obligations := {
	"role_arn": "arn:aws:iam::123456789012:role/bedrock-runtime-demo",
	"session_seconds": 900,
	"audit_capture": "hash",
}

batch_obligations := {
	"role_arn": "arn:aws:iam::123456789012:role/bedrock-runtime-batch",
	"session_seconds": 900,
	"audit_capture": "hash",
}

foundation(id) := {
	"id": id,
	"kind": "foundation-model",
	"provider": split(id, ".")[0],
	"arn": null,
	"geo": null,
	"account": null,
	"region": null,
	"foundation_id": id,
}

# A system cross-region inference profile id such as "us.<foundation id>".
profile(geo, id) := {
	"id": concat(".", [geo, id]),
	"kind": "inference-profile",
	"provider": split(id, ".")[0],
	"arn": null,
	"geo": geo,
	"account": null,
	"region": null,
	"foundation_id": id,
}

# An inference-profile ARN in `region`, for the us. profile of `id`.
profile_arn(region, id) := {
	"id": arn,
	"kind": "inference-profile",
	"provider": split(id, ".")[0],
	"arn": arn,
	"geo": "us",
	"account": account,
	"region": region,
	"foundation_id": id,
} if {
	arn := sprintf("arn:aws:bedrock:%s:%s:inference-profile/us.%s", [region, account, id])
}

base := {
	"identity": {
		"spiffe_id": chat,
		"trust_domain": "example.org",
		"path": "/ns/demo/sa/chat",
		"serial": "0a1b",
		"not_after": "2030-01-01T00:00:00Z",
	},
	"request": {
		"operation": "Converse",
		"method": "POST",
		"path": "/model/anthropic.claude-3-haiku-20240307-v1:0/converse",
		"region": "us-east-1",
		"account": null,
		"model": foundation(haiku),
		"body_bytes": 128,
		"tools": [],
		"tools_unreadable": [],
		"stream": false,
		"guardrail": null,
	},
	"classification": {"declared": "internal", "detected": "public", "effective": "internal", "findings": []},
	"task": null,
	"time": "2025-06-01T12:00:00Z",
}

set(path, value) := {"op": "add", "path": path, "value": value}

as_identity(id) := set("/identity/spiffe_id", id)

as_batch := [as_identity(batch), set("/request/model", foundation(titan)), set("/request/operation", "InvokeModel")]

task := {
	"id": "t-1",
	"purpose": "demo",
	"opened_by": chat,
	"expires_at": "2025-06-01T13:00:00Z",
	"calls": 0,
	"max_calls": 10,
	"models_used": [],
	"classifications_seen": [],
}

# The registry with the entry of `tc.id` (default chat) replaced by `tc.entry`.
workloads_for(tc) := object.union(object.remove(data.bedrock.workloads, [id]), {id: entry}) if {
	entry := tc.entry
	id := object.get(tc, "id", chat)
} else := data.bedrock.workloads

run(tc) := decision if {
	decision := authz.decision with input as json.patch(base, tc.patches)
		with data.bedrock.workloads as workloads_for(tc)
}

codes(decision) := {code |
	some reason in decision.reasons
	code := substring(reason, 0, indexof(reason, ": "))
}

with_entry(patches) := json.patch(chat_entry, patches)

denials := {
	"unknown identity": {"patches": [as_identity("spiffe://example.org/ns/demo/sa/unknown")], "codes": {"workload_not_registered"}},
	"string-prefix sibling chat-evil": {"patches": [as_identity("spiffe://example.org/ns/demo/sa/chat-evil")], "codes": {"workload_not_registered"}},
	"truncated id": {"patches": [as_identity("spiffe://example.org/ns/demo/sa/cha")], "codes": {"workload_not_registered"}},
	"child path": {"patches": [as_identity("spiffe://example.org/ns/demo/sa/chat/x")], "codes": {"workload_not_registered"}},
	"case variant": {"patches": [as_identity("spiffe://example.org/ns/demo/sa/Chat")], "codes": {"workload_not_registered"}},
	"orphan without owner": {
		"patches": [as_identity(orphan), set("/request/model", foundation(titan)), set("/request/operation", "InvokeModel")],
		"codes": {"owner_missing"},
	},
	"owner with empty team": {
		"patches": [],
		"entry": with_entry([set("/owner", {"team": "", "contact": "demo@example.org"})]),
		"codes": {"owner_missing"},
	},
	"trust domain disagrees with the id": {"patches": [set("/identity/trust_domain", "evil.org")], "codes": {"trust_domain_not_accepted"}},
	"foreign trust domain": {
		"patches": [as_identity(evil), set("/identity/trust_domain", "evil.org")],
		"codes": {"workload_not_registered", "trust_domain_not_accepted"},
	},
	"foreign trust domain even if registered": {
		"id": evil, "entry": chat_entry,
		"patches": [as_identity(evil), set("/identity/trust_domain", "evil.org")],
		"codes": {"trust_domain_not_accepted"},
	},
	"batch may not Converse": {"patches": array.concat(as_batch, [set("/request/operation", "Converse")]), "codes": {"operation_not_allowed"}},
	"bidirectional stream not listed": {"patches": [set("/request/operation", "InvokeModelWithBidirectionalStream")], "codes": {"operation_not_allowed"}},
	"operation missing": {"patches": [{"op": "remove", "path": "/request/operation"}], "codes": {"operation_not_allowed"}},
	"model not listed": {"patches": [set("/request/model", foundation("anthropic.claude-v2"))], "codes": {"model_not_allowed"}},
	"batch may not use haiku": {"patches": array.concat(as_batch, [set("/request/model", foundation(haiku))]), "codes": {"model_not_allowed"}},
	"model operation without a model": {"patches": [set("/request/model", null)], "codes": {"model_not_allowed"}},
	"model without an id": {"patches": [set("/request/model", {})], "codes": {"model_not_allowed"}},
	"foundation-model ARN is not the listed id": {
		"patches": [set("/request/model", object.union(foundation(haiku), {"id": "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0"}))],
		"codes": {"model_not_allowed"},
	},
	"profile of an unlisted model": {"patches": [set("/request/model", profile("us", "meta.llama3-8b-instruct-v1:0"))], "codes": {"model_not_allowed"}},
	"eu profile of a listed model": {"patches": [set("/request/model", profile("eu", haiku))], "codes": {"geo_not_allowed"}},
	"apac profile of a listed model": {"patches": [set("/request/model", profile("apac", haiku))], "codes": {"geo_not_allowed"}},
	"batch has no geos": {"patches": array.concat(as_batch, [set("/request/model", profile("us", titan))]), "codes": {"geo_not_allowed"}},
	"workload without geos": {
		"patches": [set("/request/model", profile("us", haiku))],
		"entry": json.patch(chat_entry, [{"op": "remove", "path": "/geos"}]),
		"codes": {"geo_not_allowed"},
	},
	"region not listed": {"patches": [set("/request/region", "eu-west-1")], "codes": {"region_not_allowed"}},
	"region missing": {"patches": [set("/request/region", null)], "codes": {"region_not_allowed"}},
	"batch region us-west-2": {"patches": array.concat(as_batch, [set("/request/region", "us-west-2")]), "codes": {"region_not_allowed"}},
	"model ARN in a region not listed": {"patches": [set("/request/model", profile_arn("eu-central-1", sonnet))], "codes": {"region_not_allowed"}},
	"account not listed": {"patches": [set("/request/account", "999999999999")], "codes": {"account_not_allowed"}},
	"account not a string": {"patches": [set("/request/account", 123456789012)], "codes": {"account_not_allowed"}},
	"no account, role in another account": {
		"patches": [],
		"entry": with_entry([set("/role_arn", "arn:aws:iam::555555555555:role/x")]),
		"codes": {"account_not_allowed"},
	},
	"restricted above confidential": {"patches": [set("/classification/effective", "restricted")], "codes": {"classification_too_high", "model_classification_too_high"}},
	"batch confidential above internal": {"patches": array.concat(as_batch, [set("/classification/effective", "confidential")]), "codes": {"classification_too_high", "model_classification_too_high"}},
	"unknown level": {"patches": [set("/classification/effective", "secret")], "codes": {"classification_too_high", "model_classification_too_high"}},
	"classification missing": {"patches": [{"op": "remove", "path": "/classification"}], "codes": {"classification_too_high", "model_classification_too_high"}},
	"workload without a maximum": {
		"patches": [set("/classification/effective", "public")],
		"entry": json.patch(chat_entry, [{"op": "remove", "path": "/max_classification"}]),
		"codes": {"classification_too_high"},
	},
	"task required, none given": {"patches": [], "entry": with_entry([set("/require_task", true)]), "codes": {"task_required"}},
	"admin on the runtime": {"patches": [as_identity(admin), set("/identity/path", "/ns/platform/sa/admin")], "codes": {"workload_not_registered", "admin_identity_on_runtime"}},
	"admin registered as a workload": {"id": admin, "entry": chat_entry, "patches": [as_identity(admin)], "codes": {"admin_identity_on_runtime"}},
	"no role_arn": {
		"patches": [],
		"entry": json.patch(chat_entry, [{"op": "remove", "path": "/role_arn"}]),
		"codes": {"workload_incomplete", "account_not_allowed"},
	},
	"role_arn not an ARN": {"patches": [set("/request/account", account)], "entry": with_entry([set("/role_arn", "bedrock-runtime-demo")]), "codes": {"workload_incomplete"}},
	"role_arn not a string": {"patches": [set("/request/account", account)], "entry": with_entry([set("/role_arn", 7)]), "codes": {"workload_incomplete"}},
	"workload without operations": {"patches": [], "entry": json.patch(chat_entry, [{"op": "remove", "path": "/operations"}]), "codes": {"operation_not_allowed"}},
	"workload without models": {"patches": [], "entry": json.patch(chat_entry, [{"op": "remove", "path": "/models"}]), "codes": {"model_not_allowed"}},
	"workload without regions": {"patches": [], "entry": json.patch(chat_entry, [{"op": "remove", "path": "/regions"}]), "codes": {"region_not_allowed"}},
	"workload without accounts": {"patches": [], "entry": json.patch(chat_entry, [{"op": "remove", "path": "/accounts"}]), "codes": {"account_not_allowed"}},
	"workload entry not an object": {"patches": [], "entry": true, "codes": {"workload_not_registered"}},
	"session below the STS minimum": {"patches": [], "entry": with_entry([set("/session_seconds", 60)]), "codes": {"workload_incomplete"}},
	"session above the STS maximum": {"patches": [], "entry": with_entry([set("/session_seconds", 50000)]), "codes": {"workload_incomplete"}},
	"session as a string": {"patches": [], "entry": with_entry([set("/session_seconds", "900")]), "codes": {"workload_incomplete"}},
	"unknown audit_capture": {"patches": [], "entry": with_entry([set("/audit_capture", "everything")]), "codes": {"workload_incomplete"}},
	"every reason is listed": {
		"patches": [set("/request/region", "eu-west-1"), set("/classification/effective", "restricted"), set("/request/model", profile("eu", haiku))],
		"codes": {"region_not_allowed", "classification_too_high", "geo_not_allowed", "model_classification_too_high"},
	},
	"empty request": {"patches": [set("/request", {})], "codes": {"operation_not_allowed", "region_not_allowed"}},
}

test_denied[name] if {
	some name, tc in denials
	decision := run(tc)
	decision.allow == false
	decision.obligations == {}
	codes(decision) == tc.codes
	count(decision.reasons) >= count(tc.codes)
}

runtime_operations := [
	"InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream", "CountTokens",
	"ApplyGuardrail", "StartAsyncInvoke", "GetAsyncInvoke", "ListAsyncInvokes",
]

model_free_operations := {"ApplyGuardrail", "GetAsyncInvoke", "ListAsyncInvokes"}

allowances := {
	"chat Converse haiku": {"patches": [], "obligations": chat_obligations},
	"us profile of a listed foundation model": {"patches": [set("/request/model", profile("us", haiku))], "obligations": chat_obligations},
	"listed account": {"patches": [set("/request/account", account)], "obligations": chat_obligations},
	"account missing: the role's account": {"patches": [{"op": "remove", "path": "/request/account"}], "obligations": chat_obligations},
	"listed inference-profile ARN": {
		"patches": [set("/request/model", profile_arn("us-east-1", sonnet)), set("/request/account", account)],
		"obligations": chat_obligations,
	},
	"sonnet in us-west-2": {"patches": [set("/request/model", foundation(sonnet)), set("/request/region", "us-west-2")], "obligations": chat_obligations},
	"at the maximum classification": {"patches": [set("/classification/effective", "confidential")], "obligations": chat_obligations},
	"public": {"patches": [set("/classification/effective", "public")], "obligations": chat_obligations},
	"batch InvokeModel titan": {"patches": as_batch, "obligations": batch_obligations},
	"batch CountTokens titan": {"patches": array.concat(as_batch, [set("/request/operation", "CountTokens")]), "obligations": batch_obligations},
	"task required and given": {"patches": [set("/task", task)], "entry": with_entry([set("/require_task", true)]), "obligations": chat_obligations},
	"audit_capture from the workload": {
		"patches": [],
		"entry": with_entry([set("/audit_capture", "full")]),
		"obligations": object.union(chat_obligations, {"audit_capture": "full"}),
	},
}

test_allowed[name] if {
	some name, tc in allowances
	object.remove(run(tc), ["owner"]) == {"allow": true, "reasons": [], "obligations": tc.obligations}
}

model_for(op) := null if {
	op in model_free_operations
} else := foundation(haiku)

test_chat_every_runtime_operation[op] if {
	some op in runtime_operations
	model := model_for(op)
	run({"patches": [set("/request/operation", op), set("/request/model", model)]}).allow == true
}

test_sonnet_profile_arn_is_listed if {
	sonnet_profile_arn in chat_entry.models
	profile_arn("us-east-1", sonnet).id == sonnet_profile_arn
}

test_reason_names_value_identity_and_owner if {
	decision := run({"patches": [set("/request/model", foundation("anthropic.claude-v2"))]})
	decision.reasons == ["model_not_allowed: anthropic.claude-v2 is not in the allowlist of spiffe://example.org/ns/demo/sa/chat (owner team-demo)"]
}

test_unowned_reason_says_owner_none if {
	decision := run({"patches": [as_identity(orphan), set("/request/model", foundation(titan)), set("/request/operation", "InvokeModel")]})
	decision.reasons == ["owner_missing: spiffe://example.org/ns/demo/sa/orphan (owner none) has no owner team and contact"]
}

test_every_reason_has_a_code_prefix if {
	decision := run(denials["every reason is listed"])
	every reason in decision.reasons {
		regex.match(`^[a-z_]+: \S`, reason)
	}
}

malformed_inputs := {
	"empty object": {},
	"string": "junk",
	"array": [1, 2],
	"null": null,
	"identity only": {"identity": base.identity},
	"wrong types": {"identity": "x", "request": 3, "classification": [], "task": "t"},
}

test_malformed_input_is_a_well_formed_deny[name] if {
	some name, doc in malformed_inputs
	decision := authz.decision with input as doc
	decision.allow == false
	decision.obligations == {}
	count(decision.reasons) > 0
	object.keys(decision) == {"allow", "reasons", "obligations", "owner"}
}

test_no_input_is_a_well_formed_deny if {
	authz.decision == {
		"allow": false,
		"reasons": [
			"trust_domain_not_accepted: trust domain null of null (owner none) is not accepted",
			"workload_not_registered: null (owner none) is not a registered workload",
		],
		"obligations": {},
		"owner": null,
	}
}

test_empty_registry_denies if {
	decision := authz.decision with input as base with data.bedrock.workloads as {}
	codes(decision) == {"workload_not_registered"}
}

test_no_accepted_trust_domain_denies if {
	decision := authz.decision with input as base with data.bedrock.trust_domains as []
	codes(decision) == {"trust_domain_not_accepted"}
}

test_owner_is_reported_for_the_audit_record if {
	authz.decision.owner == "team-demo" with input as base
	authz.decision.owner == null with input as object.union(base, {"identity": {"spiffe_id": "spiffe://example.org/ns/demo/sa/orphan"}})
}

# --- the security-team rules of the policy pack ---------------------------------

agent := "spiffe://example.org/ns/agents/planner"

eu_support := "spiffe://example.org/ns/eu/sa/support"

as_agent := [as_identity(agent), set("/identity/path", "/ns/agents/planner")]

decide(patches) := decision if {
	decision := authz.decision with input as json.patch(base, patches)
}

test_segment_pattern_registers_ids_below_it if {
	decision := decide(as_agent)
	decision.allow
	decision.owner == "team-agents"
	decision.obligations.role_arn == "arn:aws:iam::123456789012:role/bedrock-runtime-agents"
}

test_segment_pattern_never_matches_a_string_prefix if {
	decision := decide([as_identity("spiffe://example.org/ns/agents-evil/planner")])
	codes(decision) == {"workload_not_registered"}
}

test_exact_prefix_is_not_a_match if {
	decision := decide([as_identity("spiffe://example.org/ns/demo/sa/chat-evil")])
	codes(decision) == {"workload_not_registered"}
}

test_the_longest_pattern_wins if {
	registry := object.union(data.bedrock.workloads, {"spiffe://example.org/ns/*": object.union(chat_entry, {"owner": {"team": "broad", "contact": "b@example.org"}})})
	decision := authz.decision with input as json.patch(base, as_agent) with data.bedrock.workloads as registry
	decision.owner == "team-agents"
}

test_version_pattern_admits_versions_of_one_family_only if {
	decide(array.concat(as_agent, [set("/request/model", foundation("anthropic.claude-3-haiku-20991231-v9:0"))])).allow
	codes(decide(array.concat(as_agent, [set("/request/model", foundation(sonnet))]))) == {"model_not_allowed"}
}

test_model_ceiling_applies_even_when_the_workload_allows_more if {
	decision := decide([set("/request/model", foundation(titan)), set("/classification/effective", "confidential")])
	codes(decision) == {"model_classification_too_high"}
}

test_model_outside_the_catalogue_gets_the_default_ceiling if {
	registry := object.union(data.bedrock.workloads, {chat: object.union(chat_entry, {"models": ["meta.llama3-8b-instruct-v1:0"]})})
	decision := authz.decision with input as json.patch(base, [set("/request/model", foundation("meta.llama3-8b-instruct-v1:0")), set("/classification/effective", "confidential")])
		with data.bedrock.workloads as registry
	codes(decision) == {"model_classification_too_high"}
}

test_global_profile_allowed_for_internal_denied_for_confidential if {
	global_sonnet := set("/request/model", profile("global", sonnet))
	decide([global_sonnet]).allow
	codes(decide([global_sonnet, set("/classification/effective", "confidential")])) == {"geo_classification_too_high"}
}

test_eu_resident_workload_stays_in_the_eu if {
	as_eu := [as_identity(eu_support), set("/request/region", "eu-central-1")]
	decide(as_eu).allow
	decide(array.concat(as_eu, [set("/request/model", profile("eu", haiku))])).allow
	codes(decide(array.concat(as_eu, [set("/request/region", "us-east-1")]))) == {"region_not_allowed", "residency_violation"}
	codes(decide(array.concat(as_eu, [set("/request/model", profile("us", haiku))]))) == {"geo_not_allowed", "residency_violation"}
}

test_role_is_chosen_per_target_account if {
	as_eu := [as_identity(eu_support), set("/request/region", "eu-central-1")]
	decide(array.concat(as_eu, [set("/request/account", "210987654321")])).obligations.role_arn == "arn:aws:iam::210987654321:role/bedrock-runtime-eu"
	decide(as_eu).obligations.role_arn == "arn:aws:iam::123456789012:role/bedrock-runtime-eu"
}

test_only_approved_tools if {
	decide([set("/request/tools", ["lookup", "get_weather"])]).allow
	decision := decide([set("/request/tools", ["lookup", "shell_exec"])])
	codes(decision) == {"tool_not_allowed"}
	contains(decision.reasons[0], "shell_exec")
}

test_cost_headers_default_unless_the_workload_lists_more if {
	decide([set("/request/bedrock_headers", {})]).allow
	decide([set("/request/bedrock_headers", {
		"x-amzn-bedrock-service-tier": "default",
		"x-amzn-bedrock-performanceconfig-latency": "standard",
		"x-amzn-bedrock-request-metadata": "{\"team\":\"demo\"}",
		"x-amzn-bedrock-projectidentifier": "proj-1",
	})]).allow
	tier := decide([set("/request/bedrock_headers", {"x-amzn-bedrock-service-tier": "priority"})])
	codes(tier) == {"service_tier_not_allowed"}
	contains(tier.reasons[0], "priority")
	latency := [set("/request/bedrock_headers", {"x-amzn-bedrock-performanceconfig-latency": "optimized"})]
	codes(decide(latency)) == {"latency_mode_not_allowed"}
	listed := {"service_tiers": ["default", "flex"], "latency_modes": ["standard", "optimized"]}
	allowed := authz.decision with input as json.patch(base, [
		set("/request/bedrock_headers", {
			"x-amzn-bedrock-service-tier": "flex",
			"x-amzn-bedrock-performanceconfig-latency": "optimized",
		}),
	])
		with data.bedrock.workloads as object.union(data.bedrock.workloads, {chat: object.union(chat_entry, listed)})
	allowed.allow
}

test_unreadable_tools_are_refused if {
	decide([set("/request/tools_unreadable", [])]).allow
	decision := decide([set("/request/tools_unreadable", ["additionalModelRequestFields.mcp_servers", "tools[1]"])])
	codes(decision) == {"tools_unreadable"}
	contains(decision.reasons[0], "(additionalModelRequestFields.mcp_servers, tools[1])")
	contains(decision.reasons[0], chat)
}

test_unreadable_tools_are_refused_with_readable_ones_approved if {
	decision := decide([set("/request/tools", ["lookup"]), set("/request/tools_unreadable", ["tools[1]"])])
	codes(decision) == {"tools_unreadable"}
}

test_unreadable_tools_are_refused_for_a_workload_without_tools if {
	decision := run({
		"patches": [set("/request/tools_unreadable", ["tools[0]"])],
		"entry": json.patch(chat_entry, [{"op": "remove", "path": "/tools"}]),
	})
	codes(decision) == {"tools_unreadable"}
}

# An input without the key (an older proxy) reads as readable; anything but [] or null does not.
test_tools_unreadable_values_other_than_a_list_deny if {
	decide([{"op": "remove", "path": "/request/tools_unreadable"}]).allow
	decide([set("/request/tools_unreadable", null)]).allow
	codes(decide([set("/request/tools_unreadable", true)])) == {"tools_unreadable"}
	decision := decide([set("/request/tools_unreadable", [1])])
	codes(decision) == {"tools_unreadable"}
	contains(decision.reasons[0], "([1])")
}

test_async_output_must_be_an_approved_bucket_in_an_allowed_account if {
	async := [set("/request/operation", "StartAsyncInvoke")]
	ok := {"s3_uri": "s3://demo-bedrock-output/runs/", "bucket_owner": "123456789012"}
	decide(array.concat(async, [set("/request/async_output", ok)])).allow
	elsewhere := object.union(ok, {"s3_uri": "s3://exfil-bucket/x"})
	codes(decide(array.concat(async, [set("/request/async_output", elsewhere)]))) == {"async_output_not_allowed"}
	foreign := object.union(ok, {"bucket_owner": "999999999999"})
	codes(decide(array.concat(async, [set("/request/async_output", foreign)]))) == {"async_output_not_allowed"}
	not_s3 := object.union(ok, {"s3_uri": "https://example.org/x"})
	codes(decide(array.concat(async, [set("/request/async_output", not_s3)]))) == {"async_output_not_allowed"}
}

# Admission sees no body: neutral classification, no tools, no async output.
admission_of(patches) := admission if {
	admission := authz.admission with input as json.patch(base, patches)
}

test_admission_refuses_the_caller_whatever_the_body if {
	admission_of([]).allow
	stranger := admission_of([as_identity("spiffe://example.org/ns/demo/sa/stranger")])
	not stranger.allow
	codes_of(stranger.reasons) == {"workload_not_registered"}
	codes_of(admission_of([as_identity(batch), set("/request/operation", "Converse")]).reasons) == {"operation_not_allowed", "model_not_allowed"}
	codes_of(admission_of([set("/request/region", "ap-south-1")]).reasons) == {"region_not_allowed"}
	codes_of(admission_of([set("/request/model", foundation("meta.llama3-70b-instruct-v1:0"))]).reasons) == {"model_not_allowed"}
}

test_admission_ignores_what_only_a_body_decides if {
	# Classification and tools are the body's: only the full decision judges them.
	admission_of([
		set("/classification/effective", "restricted"),
		set("/classification/findings", ["aws_secret_key"]),
		set("/request/tools", ["shell_exec"]),
	]).allow
	not decide([set("/classification/effective", "restricted")]).allow
}

test_admission_leaves_the_model_to_the_body_where_the_body_names_it if {
	# StartAsyncInvoke names its model (and so its account) in the body.
	async := [
		as_identity(batch), set("/request/operation", "StartAsyncInvoke"),
		set("/request/model", null), set("/request/account", "999999999999"),
	]
	codes_of(admission_of(async).reasons) & {"model_not_allowed", "account_not_allowed", "workload_incomplete"} == set()
	codes_of(admission_of([set("/request/account", "999999999999")]).reasons) == {"account_not_allowed"}
}

codes_of(reasons) := {split(r, ":")[0] | some r in reasons}
