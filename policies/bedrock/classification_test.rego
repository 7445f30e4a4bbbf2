package bedrock.classification_test

import data.bedrock.authz
import data.bedrock.classification

test_levels_come_from_data_and_drop_unknown_levels if {
	classification.levels == {"email": "confidential", "aws_secret_key": "restricted"} with data.bedrock.finding_levels as {
		"email": "confidential",
		"aws_secret_key": "restricted",
		"jwt": "top-secret",
	}
}

test_levels_default_to_empty if {
	classification.levels == {} with data.bedrock.finding_levels as "not an object"
}

test_shipped_levels_cover_every_detector if {
	every kind in {
		"email", "phone", "us_ssn", "payment_card", "iban", "aws_access_key_id",
		"aws_secret_key", "private_key", "jwt", "high_entropy_token", "binary_content",
		"scan_incomplete",
	} {
		kind in object.keys(classification.levels)
	}
}

# A registry where the default of an identity depends on how it is registered.
defaults_registry := {
	"spiffe://td/a": {"default_classification": "confidential"},
	"spiffe://td/b": {"default_classification": "secret"},
	"spiffe://td/c": {},
	"spiffe://td/agents/*": {"default_classification": "confidential"},
	"spiffe://td/agents/sa/*": {"default_classification": "restricted"},
	"spiffe://td/agents/sa/plain": {},
}

test_declared_default_follows_the_resolved_entry[name] if {
	some name, tc in {
		"exact key": ["spiffe://td/a", "confidential"],
		"not a level: none": ["spiffe://td/b", "internal"],
		"entry without a default": ["spiffe://td/c", "internal"],
		"through a pattern": ["spiffe://td/agents/planner", "confidential"],
		"the longest pattern": ["spiffe://td/agents/sa/x", "restricted"],
		"an exact entry without a default shadows its pattern": ["spiffe://td/agents/sa/plain", "internal"],
		"segment boundary": ["spiffe://td/agents-evil/x", "internal"],
		"unregistered": ["spiffe://td/z", "internal"],
		"no identity": [null, "internal"],
	}
	declared := classification.declared_default with data.bedrock.workloads as defaults_registry
		with input as {"identity": {"spiffe_id": tc[0]}}
	declared == tc[1]
}

test_declared_default_without_input_is_internal if {
	classification.declared_default == "internal" with data.bedrock.workloads as defaults_registry
}

# The proxy's `declared` for a call without the header is only a cached copy:
# the policy raises the effective level to its own declared_default.
test_effective_level_of_a_defaulted_call[name] if {
	some name, tc in {
		"raised to the pattern's default": ["spiffe://td/agents/planner", true, "internal", [], "confidential"],
		"raised to the longest pattern's default": ["spiffe://td/agents/sa/x", true, "internal", [], "restricted"],
		"a lower default keeps the claim": ["spiffe://td/agents/planner", true, "restricted", [], "restricted"],
		"a finding above the default": ["spiffe://td/agents/planner", true, "public", ["aws_secret_key"], "restricted"],
		"a declared level is not raised": ["spiffe://td/agents/planner", false, "internal", [], "internal"],
		"defaulted must be the boolean true": ["spiffe://td/agents/planner", "true", "internal", [], "internal"],
	}
	c := {"effective": tc[2], "findings": tc[3], "defaulted": tc[1]}
	level := classification.effective_level(c) with data.bedrock.workloads as defaults_registry
		with input as {"identity": {"spiffe_id": tc[0]}}
	level == tc[4]
}

test_unknown_kind_is_restricted if {
	classification.finding_level("new_detector") == "restricted"
}

test_effective_level[name] if {
	some name, case in {
		"no findings keeps the claim": {"c": {"effective": "internal", "findings": []}, "want": "internal"},
		"finding raises": {"c": {"effective": "public", "findings": ["aws_secret_key"]}, "want": "restricted"},
		"lower finding keeps the claim": {"c": {"effective": "restricted", "findings": ["email"]}, "want": "restricted"},
		"unknown kind raises to restricted": {"c": {"effective": "public", "findings": ["new"]}, "want": "restricted"},
		"findings missing": {"c": {"effective": "confidential"}, "want": "confidential"},
		"findings not a list": {"c": {"effective": "public", "findings": "email"}, "want": null},
		"not an object": {"c": "restricted", "want": null},
		"unknown claim kept (ranks above all)": {"c": {"effective": "secret", "findings": ["email"]}, "want": "secret"},
	}
	classification.effective_level(case.c) == case.want
}

# A proxy that reports a low effective level with a restricted finding (a
# stale map, a bug) is still judged by the policy's own map.
test_authz_uses_findings_not_only_the_claimed_level if {
	input_doc := {
		"identity": {"spiffe_id": "spiffe://example.org/ns/demo/sa/batch", "trust_domain": "example.org"},
		"request": {"operation": "InvokeModel", "region": "us-east-1", "account": "123456789012"},
		"classification": {"declared": "public", "detected": "public", "effective": "public", "findings": ["aws_secret_key"]},
	}
	some reason in authz.decision.reasons with input as input_doc
	startswith(reason, "classification_too_high: restricted")
}

# A workload registered only by a pattern, whose default is above its ceiling:
# the policy judges a defaulted call at that default even when the proxy
# reported the global one (as a proxy that read only exact keys did).
test_authz_judges_a_defaulted_call_at_the_pattern_default if {
	agent := "spiffe://example.org/ns/agents/planner"
	registry := object.union(
		data.bedrock.workloads,
		{"spiffe://example.org/ns/agents/*": {"default_classification": "confidential"}},
	)
	input_doc := {
		"identity": {"spiffe_id": agent, "trust_domain": "example.org"},
		"request": {"operation": "Converse", "region": "us-east-1", "account": "123456789012"},
		"classification": {
			"declared": "internal", "detected": "public", "effective": "internal",
			"findings": [], "defaulted": true,
		},
	}
	reasons := authz.decision.reasons with input as input_doc with data.bedrock.workloads as registry
	some reason in reasons
	startswith(reason, "classification_too_high: confidential is above the maximum internal")
}
