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
