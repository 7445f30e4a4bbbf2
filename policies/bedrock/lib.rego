# METADATA
# title: Shared helpers for the bedrock policies
# description: |
#   Input access that never goes undefined, classification ranks, owner and
#   trust-domain checks used by both bedrock.authz and bedrock.admin.
#
#   Data lives in policies/bedrock/data.json. OPA maps a data file to the
#   directory it sits in *relative to the root it was given*, so the policies
#   must be loaded as the `policies/` directory (opa run/test/eval policies/):
#   the file then appears at data.bedrock. Loading policies/bedrock/ itself
#   would put the same keys at data root and every lookup below would miss,
#   which denies everything (fail closed, but useless). Keys in data.json:
#
#     trust_domains:    [string]            accepted SPIFFE trust domains
#     admins:           [SPIFFE ID]         admin-plane identities only
#     admin_operations: [string]            operations the admin plane allows
#     workloads:        {SPIFFE ID: entry}  runtime registry: exact keys, or
#                                            "spiffe://td/path/*" for whole segments,
#                                            read only through workload_entry
#     models:           {model id: {max_classification}}  per-model ceilings
#     default_model_max_classification: level for models not in `models`
#     geo_max_classification: {geo: level}   ceilings of cross-region profiles
#
#   A workload entry: owner {team, contact}, operations, models (ids or ARNs,
#   or a foundation model id that also admits its cross-region profiles in
#   `geos`), geos, regions, accounts, max_classification, role_arn,
#   session_seconds (900-43200, the STS range), optional audit_capture
#   (none|hash|redacted|full, default hash), require_task (bool), tools
#   (approved tool names), output_buckets (async invoke), roles ({account:
#   role ARN}), data_residency ("eu"), default_classification (the declared
#   level of a call without X-Data-Classification).
package bedrock.lib

# A non-object input (absent, a string, ...) is read as {} so that every
# lookup below yields null instead of undefined and deny rules still fire.
default doc := {}

doc := input if is_object(input)

# The value at `path` in the input, or null when any step is missing.
field(path) := object.get(doc, path, null)

# OPA hoists the arguments of a negated call out of the negation, so
# `not x in data.missing` is undefined rather than true and a deny rule
# written that way would silently never fire. Every value a `not` reads is
# therefore made total here (and with object.get in the packages).
default trust_domains := []

trust_domains := data.bedrock.trust_domains

default admins := []

admins := data.bedrock.admins

default admin_operations := []

admin_operations := data.bedrock.admin_operations

default workloads := {}

workloads := data.bedrock.workloads

# The one resolver of registry keys, for every map keyed by SPIFFE ID (the
# workload registry, tasks' call_budgets): an exact key first; else a key
# ending in "/*", which registers every ID below that path by whole segments
# only ("spiffe://td/sa/agent/*" covers "spiffe://td/sa/agent/a1" but never
# "spiffe://td/sa/agent-evil/a1"), the most specific (longest) pattern
# winning. Undefined when nothing matches. Every read of a registry entry goes
# through here, so no rule can see a different entry than authorization did.
registry_entry(registry, spiffe_id) := entry if {
	is_string(spiffe_id)
	entry := registry[spiffe_id]
} else := registry[registry_pattern(registry, spiffe_id)]

# Two matching patterns of one length are the same string (both are prefixes
# of the ID), so the longest is unique.
registry_pattern(registry, spiffe_id) := pattern if {
	matching := {p | some p, _ in registry; segment_match(p, spiffe_id)}
	longest := max({count(p) | some p in matching})
	some pattern in matching
	count(pattern) == longest
}

segment_match(pattern, spiffe_id) if {
	is_string(pattern)
	is_string(spiffe_id)
	endswith(pattern, "/*")
	startswith(spiffe_id, trim_suffix(pattern, "*"))
}

# The caller's workload entry, as authorization, tasks, classification and
# the admin plane all read it.
workload_entry(spiffe_id) := registry_entry(workloads, spiffe_id)

default model_catalogue := {}

model_catalogue := data.bedrock.models

# A model nobody has cleared is cleared for internal data at most.
default default_model_max_classification := "internal"

default_model_max_classification := data.bedrock.default_model_max_classification

default geo_max_classification := {}

geo_max_classification := data.bedrock.geo_max_classification

# Classification levels, least to most sensitive (DESIGN.md section 4).
levels := {"public": 0, "internal": 1, "confidential": 2, "restricted": 3}

# A level the policy does not know ranks above restricted, and an unknown
# ceiling ranks below public: neither can let a request through.
rank(level) := object.get(levels, level, 4)

ceiling(level) := object.get(levels, level, -1)

audit_capture_modes := {"none", "hash", "redacted", "full"}

# STS AssumeRole DurationSeconds bounds.
min_session_seconds := 900

max_session_seconds := 43200

# Operations that act on a model: a null model for these is malformed input.
model_operations := {
	"InvokeModel",
	"InvokeModelWithResponseStream",
	"Converse",
	"ConverseStream",
	"CountTokens",
	"StartAsyncInvoke",
}

non_empty_string(x) if {
	is_string(x)
	x != ""
}

has_owner(workload) if {
	non_empty_string(workload.owner.team)
	non_empty_string(workload.owner.contact)
}

owner_label(workload) := workload.owner.team if {
	has_owner(workload)
} else := "none"

# The trust domain must be accepted *and* be the one the SPIFFE ID names, so
# that an inconsistent identity document cannot borrow an accepted domain.
trust_domain_accepted(spiffe_id, trust_domain) if {
	is_string(spiffe_id)
	is_string(trust_domain)
	trust_domain in trust_domains
	startswith(spiffe_id, concat("", ["spiffe://", trust_domain, "/"]))
}

# System cross-region inference profiles (us., eu., apac., global., ...) are
# the only model kinds the request parser gives a geo.
cross_region_profile(model) if non_empty_string(model.geo)
