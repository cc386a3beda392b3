package cordon.egress_test

import rego.v1

import data.cordon.egress

request_input(method, host, path) := {
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
	"parsed_path": split(trim_left(split(path, "?")[0], "/"), "/"),
	"parsed_query": {},
	"destination": {"host": host, "port": 443},
	"session": {"id": "sesn_1", "labels": {}},
	"connection": {
		"stage": "request",
		"mode": "explicit",
		"transport": "tls",
		"source": {"address": "10.200.0.2", "port": 40000},
		"sni": host,
	},
}

# A POST with a JSON body Cordon read whole.
post(host, path, body) := object.union(request_input("POST", host, path), {
	"parsed_body": body,
	"truncated_body": false,
})

messages(model) := {
	"model": model,
	"max_tokens": 1024,
	"messages": [{"role": "user", "content": "Hello"}],
}

test_connect_to_a_model_api_allowed if {
	d := egress.decision with input as {
		"destination": {"host": "api.anthropic.com", "port": 443},
		"session": {"id": "sesn_1", "labels": {}},
		"connection": {"stage": "connect", "mode": "explicit", "transport": "tls"},
	}
	d.allowed
}

test_listed_anthropic_model_allowed if {
	d := egress.decision with input as post("api.anthropic.com", "/v1/messages", messages("claude-sonnet-4-5"))
	d.allowed
	d.reason == "model claude-sonnet-4-5"
}

test_count_tokens_allowed if {
	egress.decision.allowed with input as post("api.anthropic.com", "/v1/messages/count_tokens", messages("claude-haiku-4-5"))
}

test_unlisted_model_denied_naming_it if {
	d := egress.decision with input as post("api.anthropic.com", "/v1/messages", messages("claude-opus-4-1"))
	not d.allowed
	d.reason == "model \"claude-opus-4-1\" is not allowed on api.anthropic.com"
}

test_models_are_per_host if {
	d := egress.decision with input as post("api.openai.com", "/v1/chat/completions", messages("claude-sonnet-4-5"))
	not d.allowed
	contains(d.reason, "api.openai.com")
	egress.decision.allowed with input as post("api.openai.com", "/v1/responses", {"model": "gpt-5-mini", "input": "hi"})
}

test_model_that_is_not_a_string_denied if {
	d := egress.decision with input as post("api.anthropic.com", "/v1/messages", messages(["claude-sonnet-4-5"]))
	not d.allowed
	d.reason == "no JSON body with a model"
}

test_other_paths_denied if {
	d := egress.decision with input as post("api.openai.com", "/v1/files", {"purpose": "fine-tune"})
	not d.allowed
	d.reason == "POST /v1/files is not a model call this policy allows"
}

test_listing_models_allowed if {
	egress.decision.allowed with input as request_input("GET", "api.openai.com", "/v1/models")
}

test_body_error_denied if {
	doc := object.union(request_input("POST", "api.anthropic.com", "/v1/messages"), {
		"truncated_body": false,
		"cordon": {"body_error": {"kind": "decoded_too_large", "message": "the body decodes to more than 4194304 bytes"}},
	})
	d := egress.decision with input as doc
	not d.allowed
	contains(d.reason, "decodes to more than")
}

# A request without body fields (a bundle or host that does not ask): fail closed.
test_post_without_body_fields_denied if {
	d := egress.decision with input as request_input("POST", "api.anthropic.com", "/v1/messages")
	not d.allowed
	d.reason == "no JSON body with a model"
}

test_other_hosts_denied if {
	d := egress.decision with input as post("api.mistral.ai", "/v1/chat/completions", messages("mistral-large"))
	not d.allowed
	contains(d.reason, "api.mistral.ai")
}
