# METADATA
# title: Runtime authorization for bedrock-runtime calls
# description: |
#   The proxy queries data.bedrock.authz.decision (DESIGN.md section 4) for
#   every data-plane call. The decision is total: always an object
#   {allow, reasons, obligations}. A deny lists every reason as
#   "code: text" with a stable snake_case code; obligations are {} on deny.
#
#   Allow is positive, never "no deny rule fired": the caller must be a
#   registered workload with complete obligations, and no deny may fire.
#   Workload-specific checks only run for registered workloads, so an
#   unknown caller gets exactly the reasons that apply to it.
package bedrock.authz

import data.bedrock.classification
import data.bedrock.lib

# Reached only if evaluation itself breaks; still a well-formed deny.
default decision := {
	"allow": false,
	"reasons": ["policy_error: the runtime decision could not be evaluated"],
	"obligations": {},
	"owner": null,
}

decision := {"allow": true, "reasons": [], "obligations": obligations, "owner": owner} if allow

decision := {"allow": false, "reasons": sort(deny), "obligations": {}, "owner": owner} if not allow

# Admission: the reasons that hold whatever the body says. The proxy asks for
# this before it reads a body, with an input that carries none of the body's
# values (no classification findings, tools or async output), so a caller
# refused here costs no parse and no scan. Only reasons no body can change
# count: those about the model, its account and the role only when the model
# does not come from the body (StartAsyncInvoke names it there).
admission := {"allow": count(admission_reasons) == 0, "reasons": sort(admission_reasons), "owner": owner}

admission_reasons contains msg if {
	some msg in deny
	split(msg, ":")[0] in body_free_codes
}

caller_codes := {
	"workload_not_registered", "admin_identity_on_runtime", "trust_domain_not_accepted",
	"owner_missing", "operation_not_allowed", "region_not_allowed",
	"service_tier_not_allowed", "latency_mode_not_allowed",
}

target_codes := {"model_not_allowed", "geo_not_allowed", "account_not_allowed", "residency_violation", "workload_incomplete"}

body_free_codes := caller_codes | target_codes if {
	not model_in_body
} else := caller_codes

model_in_body if {
	operation in lib.model_operations
	not is_object(model)
}

# The owning team goes into every audit record (null when there is none).
owner := workload.owner.team if {
	registered
	lib.has_owner(workload)
} else := null

default allow := false

allow if {
	registered
	complete
	count(deny) == 0
}

spiffe_id := lib.field(["identity", "spiffe_id"])

trust_domain := lib.field(["identity", "trust_domain"])

operation := lib.field(["request", "operation"])

region := lib.field(["request", "region"])

model := lib.field(["request", "model"])

# Never below what the policy's own finding levels say (classification.rego).
effective := classification.effective_level(lib.field(["classification"]))

task := lib.field(["task"])

# Read with defaults: a missing field must produce a reason, never silently
# drop the deny rule that reports it.
model_id := lib.field(["request", "model", "id"])

max_classification := object.get(workload, "max_classification", null)

# Exact key first, else the longest whole-segment "/*" pattern: the one
# resolver (lib.registry_entry) every other read of the registry uses too.
workload := lib.workload_entry(spiffe_id)

registered if is_object(workload)

# A list from the workload entry; a missing list allows nothing.
listed(key) := object.get(workload, key, [])

# The identity and its owner, for every reason text.
subject := sprintf("%v (owner %s)", [spiffe_id, lib.owner_label(workload)]) if registered

else := sprintf("%v (owner none)", [spiffe_id])

audit_capture := object.get(workload, "audit_capture", "hash")

complete if is_object(obligations)

# Defined only when the workload entry carries everything the proxy needs to
# act on an allow; otherwise workload_incomplete denies.
obligations := {
	"role_arn": role_arn,
	"session_seconds": workload.session_seconds,
	"audit_capture": audit_capture,
} if {
	is_string(role_arn)
	startswith(role_arn, "arn:aws")
	is_number(workload.session_seconds)
	workload.session_seconds >= lib.min_session_seconds
	workload.session_seconds <= lib.max_session_seconds
	audit_capture in lib.audit_capture_modes
}

# With no account in the request (no ARN, no configured default) the call
# lands in the account of the role the proxy assumes, so that account is what
# the allowlist must cover. Any other non-string value is checked as it is,
# and denied.
target_account := account if {
	account := lib.field(["request", "account"])
	account != null
} else := role_account if {
	is_string(workload.role_arn)
	role_account := split(workload.role_arn, ":")[4]
} else := null

# The role the proxy assumes: per target account when the workload maps
# accounts to roles, else the workload's role.
role_arn := workload.roles[target_account] if {
	is_string(workload.roles[target_account])
} else := workload.role_arn

model_listed if model.id in listed("models")

model_listed if {
	lib.cross_region_profile(model)
	model.foundation_id in listed("models")
}

# Explicit version patterns: "*" matches within one dot-separated part only,
# so "anthropic.claude-3-haiku-*" admits every haiku version but never
# another provider or family.
model_listed if {
	some pattern in listed("models")
	contains(pattern, "*")
	glob.match(pattern, ["."], model.id)
}

model_listed if {
	lib.cross_region_profile(model)
	some pattern in listed("models")
	contains(pattern, "*")
	glob.match(pattern, ["."], model.foundation_id)
}

# Each model's own ceiling, from the catalogue in data (by foundation model id,
# else by the id as called); a model not in the catalogue gets the default.
model_key := model.foundation_id if {
	lib.non_empty_string(model.foundation_id)
} else := model_id

model_max_classification := level if {
	level := lib.model_catalogue[model_key].max_classification
} else := lib.default_model_max_classification

tools := lib.field(["request", "tools"])

# Places in the body holding tools the proxy could not read: [] when there are
# none; null from a proxy that predates the key. Any other value (true, a
# string) is read as unreadable.
tools_unreadable := lib.field(["request", "tools_unreadable"])

tools_readable if tools_unreadable == []

tools_readable if tools_unreadable == null

unreadable_places := concat(", ", tools_unreadable) if {
	is_array(tools_unreadable)
	every place in tools_unreadable {
		is_string(place)
	}
} else := sprintf("%v", [tools_unreadable])

async_output := lib.field(["request", "async_output"])

bucket_of(uri) := split(trim_prefix(uri, "s3://"), "/")[0] if {
	is_string(uri)
	startswith(uri, "s3://")
} else := null

deny contains msg if {
	not registered
	msg := sprintf("workload_not_registered: %s is not a registered workload", [subject])
}

deny contains msg if {
	spiffe_id in lib.admins
	msg := sprintf("admin_identity_on_runtime: %s is an admin identity and may not call the runtime", [subject])
}

deny contains msg if {
	not lib.trust_domain_accepted(spiffe_id, trust_domain)
	msg := sprintf("trust_domain_not_accepted: trust domain %v of %s is not accepted", [trust_domain, subject])
}

deny contains msg if {
	registered
	not lib.has_owner(workload)
	msg := sprintf("owner_missing: %s has no owner team and contact", [subject])
}

deny contains msg if {
	registered
	not complete
	msg := sprintf("workload_incomplete: %s lacks a valid role_arn, session_seconds or audit_capture", [subject])
}

deny contains msg if {
	registered
	not operation in listed("operations")
	msg := sprintf("operation_not_allowed: %v is not allowed for %s", [operation, subject])
}

deny contains msg if {
	registered
	operation in lib.model_operations
	not is_object(model)
	msg := sprintf("model_not_allowed: %v names no model for %s", [operation, subject])
}

deny contains msg if {
	registered
	is_object(model)
	not model_listed
	msg := sprintf("model_not_allowed: %v is not in the allowlist of %s", [model_id, subject])
}

deny contains msg if {
	registered
	lib.cross_region_profile(model)
	not model.geo in listed("geos")
	msg := sprintf("geo_not_allowed: geo %v of %v is not allowed for %s", [model.geo, model_id, subject])
}

deny contains msg if {
	registered
	not region in listed("regions")
	msg := sprintf("region_not_allowed: region %v is not allowed for %s", [region, subject])
}

# A model ARN names its own region; it must be allowed as well.
deny contains msg if {
	registered
	lib.non_empty_string(model.region)
	not model.region in listed("regions")
	msg := sprintf("region_not_allowed: model region %v of %v is not allowed for %s", [model.region, model_id, subject])
}

deny contains msg if {
	registered
	not target_account in listed("accounts")
	msg := sprintf("account_not_allowed: account %v is not allowed for %s", [target_account, subject])
}

deny contains msg if {
	registered
	lib.rank(effective) > lib.ceiling(max_classification)
	msg := sprintf(
		"classification_too_high: %v is above the maximum %v of %s",
		[effective, max_classification, subject],
	)
}

deny contains msg if {
	registered
	workload.require_task == true
	not is_object(task)
	msg := sprintf("task_required: %s must name a task (X-Task-Id) for every call", [subject])
}

deny contains msg if {
	registered
	is_object(model)
	lib.rank(effective) > lib.ceiling(model_max_classification)
	msg := sprintf(
		"model_classification_too_high: %v data may not be sent to %v (cleared up to %v) by %s",
		[effective, model_id, model_max_classification, subject],
	)
}

# Geographic profiles spread data over a geography; some carry a ceiling
# (e.g. global. routes anywhere, so nothing confidential goes there).
deny contains msg if {
	registered
	lib.cross_region_profile(model)
	geo_max := lib.geo_max_classification[model.geo]
	lib.rank(effective) > lib.ceiling(geo_max)
	msg := sprintf(
		"geo_classification_too_high: %v data may not use the %v. profile %v (up to %v) for %s",
		[effective, model.geo, model_id, geo_max, subject],
	)
}

# Data residency: an EU-resident workload stays in EU regions and EU profiles.
deny contains msg if {
	registered
	workload.data_residency == "eu"
	not startswith(sprintf("%v", [region]), "eu-")
	msg := sprintf("residency_violation: region %v is outside the EU for %s", [region, subject])
}

deny contains msg if {
	registered
	workload.data_residency == "eu"
	lib.cross_region_profile(model)
	model.geo != "eu"
	msg := sprintf("residency_violation: profile %v is not an eu. profile for %s", [model_id, subject])
}

deny contains msg if {
	registered
	is_array(tools)
	some tool in tools
	not tool in listed("tools")
	msg := sprintf("tool_not_allowed: tool %v is not approved for %s", [tool, subject])
}

# Every registered workload has a tool allowlist (no `tools` allows none), and
# a task's tools can only narrow it: a tool the proxy could not read is one no
# allowlist can be shown to cover.
deny contains msg if {
	registered
	not tools_readable
	msg := sprintf(
		"tools_unreadable: the request carries tools the proxy cannot read (%s), so the tool allowlist of %s cannot be applied",
		[unreadable_places, subject],
	)
}

deny contains msg if {
	registered
	is_object(async_output)
	not bucket_of(async_output.s3_uri) in listed("output_buckets")
	msg := sprintf(
		"async_output_not_allowed: output %v is not an approved bucket for %s",
		[async_output.s3_uri, subject],
	)
}

deny contains msg if {
	registered
	is_object(async_output)
	owner_account := object.get(async_output, "bucket_owner", null)
	owner_account != null
	not owner_account in listed("accounts")
	msg := sprintf(
		"async_output_not_allowed: bucket owner %v is outside the accounts of %s",
		[owner_account, subject],
	)
}

# Forwarded X-Amzn-Bedrock-* headers (request.bedrock_headers, names lower
# case) that change what a call costs: a workload gets a service tier or a
# latency mode other than Bedrock's default only when its entry lists it.
# Request metadata and project identifiers only label the call (cost
# allocation) and are allowed; they are on the audit record.
bedrock_header(name, fallback) := value if {
	value := lib.field(["request", "bedrock_headers", name])
	value != null
} else := fallback

deny contains msg if {
	registered
	tier := bedrock_header("x-amzn-bedrock-service-tier", "default")
	not tier in object.get(workload, "service_tiers", ["default"])
	msg := sprintf("service_tier_not_allowed: service tier %v is not allowed for %s", [tier, subject])
}

deny contains msg if {
	registered
	latency := bedrock_header("x-amzn-bedrock-performanceconfig-latency", "standard")
	not latency in object.get(workload, "latency_modes", ["standard"])
	msg := sprintf("latency_mode_not_allowed: latency mode %v is not allowed for %s", [latency, subject])
}
