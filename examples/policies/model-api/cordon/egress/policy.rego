# Model APIs, limited to listed models.
#
# The sandbox may call the Anthropic Messages API and the OpenAI Chat Completions and
# Responses APIs, with the models listed per host in data.cordon.models.apis; the model is read
# from the JSON request body (input.parsed_body.model). GET requests (listing models) are
# allowed; anything else is denied with a reason naming the host, path or model.
#
# The manifest asks for bodies up to 1 MiB (prompts can be long), refusing larger ones (on the
# proxy's Pingora path, chunked or over 64 KiB, it reads at most 64 KiB: see docs/POLICY.md,
# "The proxy side"). A call without a JSON body is denied as "no JSON body".
package cordon.egress

import rego.v1

import data.cordon.models

default decision := {"allowed": false, "reason": "no rule allows this request"}

host := input.destination.host

api := models.apis[host]

http := input.attributes.request.http

decision := {"allowed": false, "reason": "source is not registered to any session"} if {
	input.session.id == "unknown"
} else := {"allowed": true, "mitm": true, "reason": "model API"} if {
	input.connection.stage == "connect"
	api
} else := {"allowed": false, "reason": sprintf("%s is not a model API this policy allows", [host])} if {
	not api
} else := {"allowed": true, "reason": "model API read"} if {
	http.method == "GET"
} else := {"allowed": false, "reason": sprintf("%s %s is not a model call this policy allows", [http.method, http.path])} if {
	not model_call
} else := {"allowed": false, "reason": sprintf("the request body could not be read: %s", [input.cordon.body_error.message])} if {
	input.cordon.body_error
} else := {"allowed": false, "reason": "no JSON body with a model"} if {
	not is_string(input.parsed_body.model)
} else := {"allowed": false, "reason": sprintf("model %q is not allowed on %s", [input.parsed_body.model, host])} if {
	not input.parsed_body.model in api.models
} else := {"allowed": true, "reason": sprintf("model %s", [input.parsed_body.model])}

model_call if {
	http.method == "POST"
	input.parsed_path in api.paths
}
