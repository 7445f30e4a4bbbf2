package bedrock.lib_test

import data.bedrock.lib

test_rank_orders_levels if {
	lib.rank("public") < lib.rank("internal")
	lib.rank("internal") < lib.rank("confidential")
	lib.rank("confidential") < lib.rank("restricted")
}

test_unknown_level_exceeds_every_ceiling[name] if {
	some name, level in {"unknown": "secret", "null": null, "upper case": "PUBLIC"}
	every ceiling in object.keys(lib.levels) {
		lib.rank(level) > lib.ceiling(ceiling)
	}
}

test_unknown_ceiling_admits_nothing if {
	every level in object.keys(lib.levels) {
		lib.rank(level) > lib.ceiling("secret")
	}
}

test_field_reads_nested_values_or_null if {
	lib.field(["a", "b"]) == 1 with input as {"a": {"b": 1}}
	lib.field(["a", "c"]) == null with input as {"a": {"b": 1}}
	lib.field(["a", "b"]) == null with input as {"a": "flat"}
	lib.field(["a"]) == null with input as ["a"]
}

owners := {
	"complete": {"entry": {"owner": {"team": "t", "contact": "c"}}, "label": "t"},
	"no owner": {"entry": {}, "label": "none"},
	"no contact": {"entry": {"owner": {"team": "t"}}, "label": "none"},
	"empty team": {"entry": {"owner": {"team": "", "contact": "c"}}, "label": "none"},
	"team not a string": {"entry": {"owner": {"team": 1, "contact": "c"}}, "label": "none"},
}

test_owner_label[name] if {
	some name, tc in owners
	lib.owner_label(tc.entry) == tc.label
}

test_trust_domain_accepted if {
	lib.trust_domain_accepted("spiffe://example.org/ns/a/sa/b", "example.org")
}

trust_domain_rejections := {
	"other domain": ["spiffe://evil.org/ns/a/sa/b", "evil.org"],
	"domain prefix": ["spiffe://example.org.evil.org/ns/a", "example.org"],
	"id in another domain": ["spiffe://evil.org/ns/a", "example.org"],
	"no path": ["spiffe://example.org", "example.org"],
	"id not a string": [null, "example.org"],
	"domain not a string": ["spiffe://example.org/ns/a", null],
}

test_trust_domain_rejected[name] if {
	some name, args in trust_domain_rejections
	not lib.trust_domain_accepted(args[0], args[1])
}

# --- the registry resolver ----------------------------------------------------------

registry := {
	"spiffe://td/ns/a/sa/x": "exact",
	"spiffe://td/ns/a/*": "ns a",
	"spiffe://td/ns/a/sa/*": "ns a sa",
	"spiffe://td/*": "domain",
	"spiffe://td/ns/agent/*": "agent",
	"spiffe://td/ns/b": "b without a pattern",
}

test_registry_entry[name] if {
	some name, tc in {
		"exact key wins over every pattern": ["spiffe://td/ns/a/sa/x", "exact"],
		"longest pattern wins": ["spiffe://td/ns/a/sa/y", "ns a sa"],
		"shorter pattern below its own path": ["spiffe://td/ns/a/other", "ns a"],
		"pattern covers deeper paths": ["spiffe://td/ns/agent/a/b/c", "agent"],
		"segment boundary: agent-evil is not below agent/": ["spiffe://td/ns/agent-evil/x", "domain"],
		"exact key is not a pattern": ["spiffe://td/ns/b/child", "domain"],
	}
	lib.registry_entry(registry, tc[0]) == tc[1]
}

test_registry_entry_undefined[name] if {
	some name, tc in {
		"segment boundary with no broader pattern": [{"spiffe://td/ns/agent/*": 1}, "spiffe://td/ns/agent-evil/x"],
		"the pattern's own path is not below it": [{"spiffe://td/ns/agent/*": 1}, "spiffe://td/ns/agent"],
		"a string prefix is no match": [{"spiffe://td/ns/agent/*": 1}, "spiffe://td/ns/agen"],
		"another trust domain": [{"spiffe://td/*": 1}, "spiffe://td.evil/x"],
		"id not a string": [{"spiffe://td/*": 1}, null],
		"registry not an object": [["spiffe://td/*"], "spiffe://td/x"],
		"empty registry": [{}, "spiffe://td/x"],
	}
	not lib.registry_entry(tc[0], tc[1])
}

test_registry_entry_keeps_falsy_values if {
	lib.registry_entry({"spiffe://td/x": 0}, "spiffe://td/x") == 0
	lib.registry_entry({"spiffe://td/*": false}, "spiffe://td/x") == false
}

test_workload_entry_reads_the_registry if {
	lib.workload_entry("spiffe://td/ns/a/sa/z") == "ns a sa" with data.bedrock.workloads as registry
	not lib.workload_entry("spiffe://other/x") with data.bedrock.workloads as registry
}
