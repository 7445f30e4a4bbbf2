# METADATA
# title: Admin-plane authorization
# description: |
#   The admin listener queries data.bedrock.admin.decision with the same
#   input shape as the runtime. Admin and runtime identities are disjoint:
#   a registered workload is never allowed here (as an admin is never allowed
#   on the runtime), and an admin may only use the operations listed in
#   lib.admin_operations. The admin plane assumes no AWS role, so
#   obligations are always {}.
package bedrock.admin

import data.bedrock.lib

# Reached only if evaluation itself breaks; still a well-formed deny.
default decision := {
	"allow": false,
	"reasons": ["policy_error: the admin decision could not be evaluated"],
	"obligations": {},
}

decision := {"allow": true, "reasons": [], "obligations": {}} if allow

decision := {"allow": false, "reasons": sort(deny), "obligations": {}} if not allow

default allow := false

allow if {
	spiffe_id in lib.admins
	count(deny) == 0
}

spiffe_id := lib.field(["identity", "spiffe_id"])

trust_domain := lib.field(["identity", "trust_domain"])

operation := lib.field(["request", "operation"])

# Resolved as the runtime resolves it, so an identity a "/*" pattern registers
# is a runtime workload here too.
deny contains msg if {
	is_object(lib.workload_entry(spiffe_id))
	msg := sprintf("runtime_identity_on_admin: %v is a runtime workload and may not use the admin plane", [spiffe_id])
}

deny contains msg if {
	not spiffe_id in lib.admins
	msg := sprintf("admin_not_registered: %v is not an admin identity", [spiffe_id])
}

deny contains msg if {
	not lib.trust_domain_accepted(spiffe_id, trust_domain)
	msg := sprintf("trust_domain_not_accepted: trust domain %v of %v is not accepted", [trust_domain, spiffe_id])
}

deny contains msg if {
	not operation in lib.admin_operations
	msg := sprintf("operation_not_allowed: %v is not an admin operation (caller %v)", [operation, spiffe_id])
}
