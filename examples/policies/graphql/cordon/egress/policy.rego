# A GraphQL API: queries for everyone, mutations only for sessions labelled for it.
#
# POSTs to the GraphQL endpoints in data.cordon.graphql.endpoints are decided by the operation
# that runs (input.cordon.graphql.operation): a query is allowed; a mutation only from a
# session whose label data.cordon.graphql.write_label ("graphql-write") is "true";
# subscriptions, batched requests, documents that do not say which operation runs and
# persisted queries (no query text) are denied.
#
# The proxy fills input.cordon.graphql because the manifest asks for bodies; a request without
# it is denied as "no GraphQL request".
package cordon.egress

import rego.v1

import data.cordon.graphql

default decision := {"allowed": false, "reason": "no rule allows this request"}

host := input.destination.host

endpoint := graphql.endpoints[host]

http := input.attributes.request.http

gql := input.cordon.graphql

decision := {"allowed": false, "reason": "source is not registered to any session"} if {
	input.session.id == "unknown"
} else := {"allowed": true, "mitm": true, "reason": "GraphQL API"} if {
	input.connection.stage == "connect"
	endpoint
} else := {"allowed": false, "reason": sprintf("%s is not a GraphQL API this policy allows", [host])} if {
	not endpoint
} else := {"allowed": false, "reason": sprintf("%s %s is not a GraphQL request", [http.method, http.path])} if {
	not graphql_post
} else := {"allowed": false, "reason": sprintf("the GraphQL request could not be read: %s", [input.cordon.body_error.message])} if {
	input.cordon.body_error
} else := {"allowed": false, "reason": "no GraphQL request"} if {
	not gql
} else := {"allowed": false, "reason": "batched GraphQL requests are not allowed"} if {
	is_array(gql)
} else := {"allowed": false, "reason": "the GraphQL document does not say which operation runs"} if {
	not gql.operation
} else := {"allowed": true, "reason": sprintf("GraphQL query %s", [concat(", ", gql.operation.fields)])} if {
	gql.operation.type == "query"
} else := {"allowed": true, "reason": sprintf("GraphQL mutation %s", [concat(", ", gql.operation.fields)])} if {
	gql.operation.type == "mutation"
	input.session.labels[graphql.write_label] == "true"
} else := {"allowed": false, "reason": sprintf("GraphQL mutation %s needs the session label %s=true", [concat(", ", gql.operation.fields), graphql.write_label])} if {
	gql.operation.type == "mutation"
} else := {"allowed": false, "reason": sprintf("GraphQL %s operations are not allowed", [gql.operation.type])}

graphql_post if {
	http.method == "POST"
	input.parsed_path == endpoint
}
