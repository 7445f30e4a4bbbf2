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

test_workload_defaults_only_valid_levels if {
	classification.workload_defaults == {"spiffe://td/a": "confidential"} with data.bedrock.workloads as {
		"spiffe://td/a": {"default_classification": "confidential"},
		"spiffe://td/b": {"default_classification": "secret"},
		"spiffe://td/c": {},
	}
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
