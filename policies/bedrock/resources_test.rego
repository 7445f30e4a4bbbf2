package bedrock.resources_test

import data.bedrock.authz

# The proxy takes request.account from an ARN in the path (a guardrail's, an
# async invocation's) and refuses a resource of another region than the call
# before policy is asked, so the shipped account and region allowlists cover
# these resources like model ARNs. Run against the real data.json.

chat := "spiffe://example.org/ns/demo/sa/chat"

own := "123456789012"

foreign := "210987654321"

resource(type, region, account) := {
	"arn": sprintf("arn:aws:bedrock:%s:%s:%s/abcdef123456", [region, account, type]),
	"type": type,
	"account": account,
	"region": region,
}

call(operation, type, region, account) := {
	"identity": {
		"spiffe_id": chat,
		"trust_domain": "example.org",
		"path": "/ns/demo/sa/chat",
		"serial": "0a1b",
		"not_after": "2030-01-01T00:00:00Z",
	},
	"request": {
		"operation": operation,
		"method": "POST",
		"path": "/",
		"region": region,
		"account": account,
		"model": null,
		"resource": resource(type, region, account),
		"body_bytes": 0,
		"tools": [],
		"tools_unreadable": [],
		"stream": false,
		"guardrail": null,
		"async_output": null,
	},
	"classification": {"declared": "internal", "detected": "public", "effective": "internal", "findings": []},
	"task": null,
	"time": "2025-06-01T12:00:00Z",
}

decision(operation, type, region, account) := d if {
	d := authz.decision with input as call(operation, type, region, account)
}

test_async_invocation_in_another_account_is_denied if {
	d := decision("GetAsyncInvoke", "async-invoke", "us-east-1", foreign)
	not d.allow
	d.reasons == [sprintf("account_not_allowed: account %s is not allowed for %s (owner team-demo)", [foreign, chat])]
}

test_guardrail_in_another_account_is_denied if {
	d := decision("ApplyGuardrail", "guardrail", "us-west-2", foreign)
	not d.allow
	d.reasons == [sprintf("account_not_allowed: account %s is not allowed for %s (owner team-demo)", [foreign, chat])]
}

test_resources_in_the_workloads_account_and_regions_are_allowed if {
	every region in ["us-east-1", "us-west-2"] {
		decision("GetAsyncInvoke", "async-invoke", region, own).allow
		decision("ApplyGuardrail", "guardrail", region, own).allow
	}
}

test_resource_in_a_region_not_allowed_is_denied if {
	d := decision("GetAsyncInvoke", "async-invoke", "eu-west-1", own)
	not d.allow
	d.reasons == [sprintf("region_not_allowed: region eu-west-1 is not allowed for %s (owner team-demo)", [chat])]
}
