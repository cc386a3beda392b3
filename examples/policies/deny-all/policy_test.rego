package cordon.egress_test

import rego.v1

import data.cordon.egress

# Inputs in the shape the proxy builds them (see `cordon-policy input`).

connect_input(session_id, host) := {
	"attributes": {
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"destination": {"address": {"socketAddress": {"address": "151.101.0.223", "portValue": 443}}},
		"tlsSession": {"sni": host},
	},
	"connection": {
		"mode": "transparent",
		"original_destination": {"address": "151.101.0.223", "port": 443},
		"sni": host,
		"source": {"address": "10.200.0.2", "port": 40000},
		"stage": "connect",
		"transport": "tls",
	},
	"destination": {"host": host, "port": 443},
	"session": {"id": session_id, "labels": {}},
	"version": {"encoding": "protojson", "ext_authz": "v3"},
}

request_input(session_id, method, host, path) := {
	"attributes": {
		"request": {"http": {
			"headers": {
				":authority": host,
				":method": method,
				":path": path,
				":scheme": "https",
			},
			"host": host,
			"method": method,
			"path": path,
			"protocol": "HTTP/1.1",
			"scheme": "https",
		}},
		"source": {"address": {"socketAddress": {"address": "10.200.0.2", "portValue": 40000}}},
		"tlsSession": {"sni": host},
	},
	"connection": {
		"mode": "explicit",
		"sni": host,
		"source": {"address": "10.200.0.2", "port": 40000},
		"stage": "request",
		"transport": "tls",
	},
	"destination": {"host": host, "port": 443},
	"parsed_path": [s | some s in split(trim_left(path, "/"), "/")],
	"parsed_query": {},
	"session": {"id": session_id, "labels": {}},
	"version": {"encoding": "protojson", "ext_authz": "v3"},
}

denied(d) if {
	d.allowed == false
	d.reason == "all egress is denied by the deny-all policy"
}

denied_unknown(d) if {
	d.allowed == false
	d.reason == "source is not registered to any session; all egress is denied by the deny-all policy"
}

test_connect_registered_session_denied if {
	denied(egress.decision) with input as connect_input("sesn_1", "pypi.org")
}

test_connect_unknown_session_denied if {
	denied_unknown(egress.decision) with input as connect_input("unknown", "pypi.org")
}

test_request_registered_session_denied if {
	denied(egress.decision) with input as request_input("sesn_1", "GET", "pypi.org", "/simple/requests/")
}

test_request_unknown_session_denied if {
	denied_unknown(egress.decision) with input as request_input("unknown", "GET", "pypi.org", "/simple/requests/")
}

test_request_write_denied if {
	denied(egress.decision) with input as request_input("sesn_1", "POST", "api.github.com", "/repos/acme/app/issues")
}

test_empty_input_denied if {
	denied(egress.decision) with input as {}
}

test_no_input_denied if {
	denied(egress.decision)
}
