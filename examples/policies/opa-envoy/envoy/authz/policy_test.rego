# Tests in the same pre-1.0 syntax, run with `cordon-policy test` (or `opa test --v0-compatible`).
package envoy.authz_test

# Rules are referenced by full path (data.envoy.authz.allow), not through `import
# data.envoy.authz`: regorus 0.14.1 ignores `with input as` on a rule reached through such an
# import alias when its package is split over several modules and one that sorts first lacks
# the rule's `import input...` (here cordon.rego sorts before policy.rego). See README.md.

basic(user, password) = header {
	header := concat(" ", ["Basic", base64.encode(concat(":", [user, password]))])
}

# A request-stage input as Cordon builds it (the Envoy ext_authz shape, plus Cordon's keys).
request(method, path, headers) = doc {
	all_headers := object.union(headers, {
		":authority": "people.internal.example",
		":method": method,
		":path": path,
		":scheme": "https",
	})
	doc := {
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"attributes": {
			"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
			"tlsSession": {"sni": "people.internal.example"},
			"request": {"http": {
				"method": method,
				"host": "people.internal.example",
				"path": path,
				"scheme": "https",
				"protocol": "HTTP/1.1",
				"headers": all_headers,
			}},
		},
		"parsed_path": split(trim_left(split(path, "?")[0], "/"), "/"),
		"parsed_query": {},
		"destination": {"host": "people.internal.example", "port": 443},
		"session": {"id": "sesn_1", "labels": {}},
		"connection": {
			"stage": "request",
			"mode": "explicit",
			"transport": "tls",
			"source": {"address": "10.200.0.2", "port": 40000},
			"sni": "people.internal.example",
		},
	}
}

as_user(method, path, user) = doc {
	doc := request(method, path, {"authorization": basic(user, "password")})
}

# Guests

test_guest_get_people_allowed {
	data.envoy.authz.allow with input as as_user("GET", "/people", "alice")
}

test_guest_post_people_denied {
	not data.envoy.authz.allow with input as as_user("POST", "/people", "alice")
}

test_guest_other_path_denied {
	not data.envoy.authz.allow with input as as_user("GET", "/people/admin", "alice")
}

# Admins

test_admin_get_people_allowed {
	data.envoy.authz.allow with input as as_user("GET", "/people", "bob")
}

test_admin_post_people_allowed {
	data.envoy.authz.allow with input as as_user("POST", "/people", "bob")
}

test_admin_delete_people_denied {
	not data.envoy.authz.allow with input as as_user("DELETE", "/people", "bob")
}

test_user_with_both_roles_may_post {
	data.envoy.authz.allow with input as as_user("POST", "/people", "carol")
}

test_query_string_ignored {
	data.envoy.authz.allow with input as as_user("GET", "/people?page=2", "alice")
}

test_user_name_read_from_header {
	data.envoy.authz.user_name == "alice" with input as as_user("GET", "/people", "alice")
}

test_password_with_colon {
	data.envoy.authz.allow with input as request("GET", "/people", {"authorization": basic("alice", "pa:ss:word")})
}

# Unknown users and bad headers

test_unknown_user_denied {
	not data.envoy.authz.allow with input as as_user("GET", "/people", "mallory")
}

test_missing_authorization_denied {
	not data.envoy.authz.allow with input as request("GET", "/people", {})
}

test_bearer_token_denied {
	not data.envoy.authz.allow with input as request("GET", "/people", {"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9"})
}

test_invalid_base64_denied {
	not data.envoy.authz.allow with input as request("GET", "/people", {"authorization": "Basic !!!not-base64"})
}

test_empty_user_name_denied {
	not data.envoy.authz.allow with input as request("GET", "/people", {"authorization": basic("", "password")})
}

test_allow_is_false_not_undefined {
	data.envoy.authz.allow == false with input as request("GET", "/people", {})
}

# Cordon's connect stage: the connection is let through, each request is then decided above.

test_connect_stage_allowed {
	data.envoy.authz.allow with input as {
		"version": {"encoding": "protojson", "ext_authz": "v3"},
		"attributes": {
			"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
			"tlsSession": {"sni": "people.internal.example"},
		},
		"destination": {"host": "people.internal.example", "port": 443},
		"session": {"id": "sesn_1", "labels": {}},
		"connection": {
			"stage": "connect",
			"mode": "explicit",
			"transport": "tls",
			"source": {"address": "10.200.0.2", "port": 40000},
			"sni": "people.internal.example",
		},
	}
}
