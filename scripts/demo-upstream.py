"""The demo's fake "internet" host for `make up`: an HTTPS server on 127.0.0.1 that answers
every request with the request head it received (so the demo can show what the proxy sent
upstream), and appends each head to a log file as one JSON line.

`POST /v1/chat/completions` is the demo's scripted model instead (OpenAI-compatible, whole or
streamed): the local session demo's agent (examples/demo/agent.toml) runs against it. It
answers only requests carrying the demo model key the proxy injects, and picks its next step
from how many tool results the conversation holds: two calls side by side, then a custom
tool, then a summary quoting what the tools returned. No model weights are involved.

Usage: demo-upstream.py PORT CERT KEY LOG [MODEL_KEY_FILE]
"""

import http.server
import json
import ssl
import sys
import time


def model_turn(messages):
    """The scripted model's next answer: (text, [(name, arguments)])."""
    results = [m.get("content") or "" for m in messages if m.get("role") == "tool"]
    if not results:
        return "I'll fetch the user and start a notes file.", [
            ("bash", {"command": "curl -sS https://api.example.test/v1/user"}),
            ("write", {"file_path": "/workspace/notes/local.md",
                       "content": "# Local session\nRun by an open model on the gateway.\n"}),
        ]
    if len(results) < 3:
        return "", [("lookup_order", {"order_id": "ord_1001"})]
    # Results come in the order the calls finished: find bash's by its call id.
    names = {c["id"]: c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}
    by_name = {names.get(m.get("tool_call_id")): (m.get("content") or "").strip()
               for m in messages if m.get("role") == "tool"}
    first_line = lambda text: text.splitlines()[0] if text else "no answer"
    return (f"Done. The API answered `{first_line(by_name.get('bash', ''))}`; "
            f"{first_line(by_name.get('lookup_order', ''))}."), []


def completion(body):
    """The chat completion for a request body: (content type, bytes)."""
    text, calls = model_turn(body.get("messages") or [])
    usage = {"prompt_tokens": sum(len(json.dumps(m)) // 4 for m in body.get("messages") or []),
             "completion_tokens": 12 * (len(calls) + 1)}
    finish = "tool_calls" if calls else "stop"
    tool_calls = [{"id": f"call_{i}", "type": "function",
                   "function": {"name": name, "arguments": json.dumps(args)}}
                  for i, (name, args) in enumerate(calls)]
    if not body.get("stream"):
        message = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        answer = {"object": "chat.completion", "model": body.get("model"), "usage": usage,
                  "choices": [{"index": 0, "message": message, "finish_reason": finish}]}
        return "application/json", json.dumps(answer).encode()
    chunks = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]}]
    for i, call in enumerate(tool_calls):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "id": call["id"], "type": "function",
             "function": {"name": call["function"]["name"], "arguments": arguments[:half]}}]}}]})
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "function": {"arguments": arguments[half:]}}]}}]})
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({"choices": [], "usage": usage})
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    return "text/event-stream", stream.encode()


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        payload = self.rfile.read(length) if length else b""
        if self.command == "POST" and self.path == "/v1/chat/completions":
            return self.model(payload)
        head = f"{self.command} {self.path} {self.request_version}\n" + "".join(
            f"{name}: {value}\n" for name, value in self.headers.items()
        )
        with open(self.server.log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"time": time.time(), "head": head}) + "\n")
        body = head.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def model(self, payload):
        expected = f"Bearer {self.server.model_key}" if self.server.model_key else None
        authorization = self.headers.get("authorization")
        with open(self.server.log_path, "a", encoding="utf-8") as log:
            shown = (authorization or "")[:14] + "…" if authorization else "(none)"
            head = f"POST /v1/chat/completions HTTP/1.1 (the scripted model)\nauthorization: {shown}\n"
            log.write(json.dumps({"time": time.time(), "head": head}) + "\n")
        if expected is None or authorization != expected:
            status, kind, body = 401, "application/json", b'{"error": {"message": "invalid API key"}}'
        else:
            try:
                status, (kind, body) = 200, completion(json.loads(payload))
            except (ValueError, AttributeError) as e:
                status, kind = 400, "application/json"
                body = json.dumps({"error": {"message": f"bad request: {e}"}}).encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    def log_message(self, *args):
        pass


def main():
    port, cert, key, log_path = sys.argv[1:5]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Echo)
    server.log_path = log_path
    server.model_key = None
    if len(sys.argv) > 5:
        with open(sys.argv[5], encoding="utf-8") as f:
            server.model_key = f.read().strip()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
