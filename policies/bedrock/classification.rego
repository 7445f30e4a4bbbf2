# METADATA
# title: Data classification data for the proxy and the decision
# description: |
#   The proxy reads this package as a document (GET
#   /v1/data/bedrock/classification) to turn its detector findings into
#   levels and to pick a workload's declared level when the caller sends no
#   X-Data-Classification header:
#
#     levels:            {finding kind: level}  from data.bedrock.finding_levels
#     workload_defaults: {SPIFFE ID: level}     each workload's default_classification
#     default_declared:  level                  for workloads without one
#
#   Entries whose level is not a known level are dropped, so the proxy and
#   this policy both count that kind as restricted (fail closed).
#   effective_level recomputes the effective level from the finding kinds with
#   this map, so a proxy holding a stale copy can never lower it.
package bedrock.classification

import data.bedrock.lib

default levels := {}

levels := {kind: level |
	some kind, level in data.bedrock.finding_levels
	level in object.keys(lib.levels)
}

workload_defaults[spiffe_id] := level if {
	some spiffe_id, workload in lib.workloads
	level := workload.default_classification
	level in object.keys(lib.levels)
}

default_declared := "internal"

names := ["public", "internal", "confidential", "restricted"]

# A kind the map does not name is treated as the most sensitive.
finding_level(kind) := object.get(levels, kind, "restricted")

# The proxy's effective level, raised to the level of any finding kind that
# is higher; null (which every ceiling refuses) when the input is malformed.
effective_level(classification) := level if {
	is_object(classification)
	findings := object.get(classification, "findings", [])
	is_array(findings)
	claimed := object.get(classification, "effective", null)
	ranks := {lib.rank(finding_level(kind)) | some kind in findings}
	level := raised(claimed, ranks)
} else := null

raised(claimed, ranks) := claimed if {
	every rank in ranks {
		rank <= lib.rank(claimed)
	}
} else := names[max(ranks)]
