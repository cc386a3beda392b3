"""mitmdump addon for cordon-bench: the allow rule, the credential injection, and the fake
upstream's address (every name the bench uses lives on 127.0.0.1, like Cordon's connect_to
and Squid's hosts_file; nothing is resolved through DNS).

Rules equivalent to Cordon's bench policy: bench.test, *.bench.test and api.github.com are
allowed, everything else gets a 403; api.github.com gets the injected credential."""

from mitmproxy import ctx, http


class Bench:
    def load(self, loader):
        loader.add_option("bench_upstream_port", int, 0, "port of the fake upstream on 127.0.0.1")

    def server_connect(self, data):
        # The TLS server name stays the host's; only the address dialled changes.
        data.server.address = ("127.0.0.1", ctx.options.bench_upstream_port)

    def request(self, flow: http.HTTPFlow) -> None:
        host = flow.request.pretty_host
        if host == "api.github.com":
            flow.request.headers["authorization"] = "Bearer bench-github-token"
        elif not (host == "bench.test" or host.endswith(".bench.test")):
            flow.response = http.Response.make(403, b"denied by the bench rule\n")


addons = [Bench()]
