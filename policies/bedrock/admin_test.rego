package bedrock.admin_test

import data.bedrock.admin

admin_id := "spiffe://example.org/ns/platform/sa/admin"

chat := "spiffe://example.org/ns/demo/sa/chat"

request(spiffe_id, trust_domain, operation) := {
	"identity": {"spiffe_id": spiffe_id, "trust_domain": trust_domain, "path": "/x", "serial": "01", "not_after": "2030-01-01T00:00:00Z"},
	"request": {"operation": operation, "method": "GET", "path": "/admin"},
	"time": "2025-06-01T12:00:00Z",
}

codes(decision) := {code |
	some reason in decision.reasons
	code := substring(reason, 0, indexof(reason, ": "))
}

test_admin_allowed_for_admin_operations[operation] if {
	some operation in data.bedrock.admin_operations
	decision := admin.decision with input as request(admin_id, "example.org", operation)
	decision == {"allow": true, "reasons": [], "obligations": {}}
}

denials := {
	"runtime operation": {
		"input": request(admin_id, "example.org", "InvokeModel"),
		"codes": {"operation_not_allowed"},
	},
	"runtime workload": {
		"input": request(chat, "example.org", "GetStatus"),
		"codes": {"runtime_identity_on_admin", "admin_not_registered"},
	},
	"unknown identity": {
		"input": request("spiffe://example.org/ns/platform/sa/ops", "example.org", "GetStatus"),
		"codes": {"admin_not_registered"},
	},
	"string-prefix sibling": {
		"input": request("spiffe://example.org/ns/platform/sa/admin-evil", "example.org", "GetStatus"),
		"codes": {"admin_not_registered"},
	},
	"trust domain disagrees with the id": {
		"input": request(admin_id, "evil.org", "GetStatus"),
		"codes": {"trust_domain_not_accepted"},
	},
	"empty input": {
		"input": {},
		"codes": {"admin_not_registered", "trust_domain_not_accepted", "operation_not_allowed"},
	},
	"non-object input": {
		"input": "junk",
		"codes": {"admin_not_registered", "trust_domain_not_accepted", "operation_not_allowed"},
	},
}

test_admin_denied[name] if {
	some name, tc in denials
	decision := admin.decision with input as tc.input
	decision.allow == false
	decision.obligations == {}
	codes(decision) == tc.codes
}

test_admin_registered_as_workload_is_denied if {
	decision := admin.decision with input as request(admin_id, "example.org", "GetStatus")
		with data.bedrock.workloads as object.union(data.bedrock.workloads, {admin_id: {"operations": []}})
	codes(decision) == {"runtime_identity_on_admin"}
}

# The admin plane resolves the registry as the runtime does: an admin that a
# "/*" pattern registers is a runtime workload (and the runtime would call it
# registered, and deny it as an admin).
test_admin_registered_by_a_pattern_is_denied if {
	decision := admin.decision with input as request(admin_id, "example.org", "GetStatus")
		with data.bedrock.workloads as object.union(data.bedrock.workloads, {"spiffe://example.org/ns/platform/*": {"operations": []}})
	codes(decision) == {"runtime_identity_on_admin"}
}

test_admin_reason_names_the_identity if {
	decision := admin.decision with input as request(chat, "example.org", "GetStatus")
	"runtime_identity_on_admin: spiffe://example.org/ns/demo/sa/chat is a runtime workload and may not use the admin plane" in decision.reasons
}

test_admin_without_admin_data_denies if {
	decision := admin.decision with input as request(admin_id, "example.org", "GetStatus")
		with data.bedrock.admins as null
		with data.bedrock.admin_operations as null
	codes(decision) == {"admin_not_registered", "operation_not_allowed"}
}
