# METADATA
# title: Data classification data for the proxy and the decision
# description: |
#   The proxy reads `levels` of this package as a document (GET
#   /v1/data/bedrock/classification) to turn its detector findings into
#   levels:
#
#     levels: {finding kind: level}  from data.bedrock.finding_levels
#
#   Entries whose level is not a known level are dropped, so the proxy and
#   this policy both count that kind as restricted (fail closed).
#
#   When a caller sends no X-Data-Classification, the proxy asks for
#   declared_default (POST /v1/data/bedrock/classification/declared_default
#   with input {"identity": {"spiffe_id": ...}}): the default_classification
#   of the workload entry lib.workload_entry resolves for that identity (the
#   entry authorization judges), else internal.
#
#   effective_level recomputes the effective level from the finding kinds
#   with this map and, for a call the proxy marked `defaulted`, from this
#   policy's own declared_default, so a proxy holding a stale copy of either
#   can never lower it.
package bedrock.classification

import data.bedrock.lib

default levels := {}

levels := {kind: level |
	some kind, level in data.bedrock.finding_levels
	level in object.keys(lib.levels)
}

# The declared level of a call from input.identity without X-Data-Classification.
default declared_default := "internal"

declared_default := workload_default(lib.field(["identity", "spiffe_id"]))

# An entry without a default, or with one that is not a level, has none: the
# resolved entry decides, never a pattern behind an exact key.
workload_default(spiffe_id) := level if {
	level := lib.workload_entry(spiffe_id).default_classification
	level in object.keys(lib.levels)
}

names := ["public", "internal", "confidential", "restricted"]

# A kind the map does not name is treated as the most sensitive.
finding_level(kind) := object.get(levels, kind, "restricted")

# The proxy's effective level, raised to the level of any finding kind that
# is higher, and to declared_default when the proxy used a default; null
# (which every ceiling refuses) when the input is malformed.
effective_level(classification) := level if {
	is_object(classification)
	findings := object.get(classification, "findings", [])
	is_array(findings)
	claimed := object.get(classification, "effective", null)
	ranks := {lib.rank(finding_level(kind)) | some kind in findings} | default_ranks(classification)
	level := raised(claimed, ranks)
} else := null

default_ranks(classification) := {lib.rank(declared_default)} if {
	classification.defaulted == true
} else := set()

raised(claimed, ranks) := claimed if {
	every rank in ranks {
		rank <= lib.rank(claimed)
	}
} else := names[max(ranks)]
