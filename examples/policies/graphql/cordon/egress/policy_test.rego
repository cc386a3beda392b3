package cordon.egress_test

import rego.v1

import data.cordon.egress

request_input(method, host, path, labels) := {
	"version": {"encoding": "protojson", "ext_authz": "v3"},
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"tlsSession": {"sni": host},
		"request": {"http": {
			"method": method,
			"host": host,
			"path": path,
			"scheme": "https",
			"protocol": "HTTP/1.1",
			"headers": {
				":authority": host,
				":method": method,
				":path": path,
				":scheme": "https",
				"content-type": "application/json",
			},
		}},
	},
	"parsed_path": split(trim_left(path, "/"), "/"),
	"parsed_query": {},
	"destination": {"host": host, "port": 443},
	"session": {"id": "sesn_1", "labels": labels},
	"connection": {
		"stage": "request",
		"mode": "explicit",
		"transport": "tls",
		"source": {"address": "10.200.0.2", "port": 40000},
		"sni": host,
	},
}

# A POST of `query` to GitHub's GraphQL endpoint; `graphql` is what input.cordon.graphql holds.
post(query, graphql, labels) := object.union(request_input("POST", "api.github.com", "/graphql", labels), {
	"parsed_body": {"query": query},
	"truncated_body": false,
	"cordon": {"graphql": graphql},
})

op(type, name, fields) := {"type": type, "name": name, "fields": fields}

one(o) := {"operation": o, "operations": [o]}

writer := {"graphql-write": "true"}

viewer := op("query", "Viewer", ["viewer"])

add_star := op("mutation", "AddStar", ["addStar"])

test_query_allowed if {
	d := egress.decision with input as post("query Viewer { viewer { login } }", one(viewer), {})
	d.allowed
	d.reason == "GraphQL query viewer"
}

test_mutation_denied_without_the_label if {
	d := egress.decision with input as post("mutation AddStar { addStar(input: {}) { clientMutationId } }", one(add_star), {})
	not d.allowed
	d.reason == "GraphQL mutation addStar needs the session label graphql-write=true"
}

test_mutation_allowed_with_the_label if {
	d := egress.decision with input as post("mutation AddStar { addStar(input: {}) { clientMutationId } }", one(add_star), writer)
	d.allowed
	d.reason == "GraphQL mutation addStar"
}

test_label_must_be_true if {
	not egress.decision.allowed with input as post("mutation AddStar { addStar }", one(add_star), {"graphql-write": "yes"})
}

test_subscription_denied if {
	sub := op("subscription", "Events", ["events"])
	d := egress.decision with input as post("subscription Events { events }", one(sub), writer)
	not d.allowed
	d.reason == "GraphQL subscription operations are not allowed"
}

# operationName picks the query out of a document that also holds a mutation: only the query runs.
test_operation_name_picks_what_runs if {
	doc := {"operation": viewer, "operations": [viewer, add_star]}
	egress.decision.allowed with input as post("query Viewer { viewer } mutation AddStar { addStar }", doc, {})
}

test_ambiguous_document_denied if {
	doc := {"operations": [viewer, add_star]}
	d := egress.decision with input as post("query Viewer { viewer } mutation AddStar { addStar }", doc, writer)
	not d.allowed
	d.reason == "the GraphQL document does not say which operation runs"
}

test_batch_denied if {
	d := egress.decision with input as post("", [one(viewer), one(add_star)], writer)
	not d.allowed
	d.reason == "batched GraphQL requests are not allowed"
}

test_invalid_graphql_denied if {
	doc := object.union(request_input("POST", "api.github.com", "/graphql", {}), {
		"parsed_body": {"query": "mutation {"},
		"truncated_body": false,
		"cordon": {"body_error": {"kind": "invalid_graphql", "message": "GraphQL syntax error at byte 10: expected a Selection Set"}},
	})
	d := egress.decision with input as doc
	not d.allowed
	contains(d.reason, "GraphQL syntax error")
}

# A persisted query (a hash, no query text) has no input.cordon.graphql.
test_persisted_query_denied if {
	doc := object.union(request_input("POST", "api.github.com", "/graphql", writer), {
		"parsed_body": {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc"}}},
		"truncated_body": false,
	})
	d := egress.decision with input as doc
	not d.allowed
	d.reason == "no GraphQL request"
}

test_get_denied if {
	d := egress.decision with input as request_input("GET", "api.github.com", "/graphql", {})
	not d.allowed
	d.reason == "GET /graphql is not a GraphQL request"
}

test_other_hosts_denied if {
	not egress.decision.allowed with input as request_input("POST", "gitlab.com", "/api/graphql", {})
}
