#!/usr/bin/env python3
"""Fixture of the Docker tier (tests/docker.rs): a mock of the Anthropic Messages API, or a
plain host that answers every GET with a banner.

    mock_api.py --port 8080 --messages      the Messages API mock
    mock_api.py --port 80 --banner TEXT     any GET answers TEXT (an "allowed"/"blocked" host)

The mock answers POST /v1/messages (streaming SSE or JSON) and /v1/messages/count_tokens,
and 404 JSON for everything else. Replies:
  - the tool_result of toolu_retry_01 (below)       -> once the file $MOCK_RETRY_GATE exists
                                                       (waits up to 60 s; the test creates it
                                                       after a live allow), the same Bash
                                                       tool_use again as toolu_retry_02
  - the tool_result of toolu_retry_02               -> text "MOCK-RETRY-DONE"
  - a user turn after the last assistant turn holds a tool_result
                                                    -> text "MOCK-TOOL-DONE"
  - the last user text holds RETRY-LIVE and the Bash tool is offered
                                                    -> a Bash tool_use toolu_retry_01 running
                                                       $MOCK_RETRY_COMMAND
  - the last user text holds RUN-TOOL and the Bash tool is offered
                                                    -> a Bash tool_use running $MOCK_TOOL_COMMAND
  - the last user text holds RUN-AFTER-REFRESH and the Bash tool is offered
                                                    -> once this process's token endpoint has
                                                       issued a pair (waits up to 60 s, so the
                                                       next request of the session comes after
                                                       the refresh), a Bash tool_use
                                                       toolu_refresh_read_01 running
                                                       $MOCK_REFRESH_COMMAND
  - the last user text holds RUN-SEARCH and the Bash tool is offered
                                                    -> a Bash tool_use toolu_broker_search_01
                                                       running $MOCK_SEARCH_COMMAND with @NEEDLES@
                                                       replaced by the credential this request
                                                       carried and those of $MOCK_SEARCH_NEEDLES
                                                       (comma list), as printf %b escapes (never
                                                       the plain text: the command lands in the
                                                       agent's transcript and argv), one a line
  - anything else                                   -> text "MOCK-ANSWER-42"
Every request is printed to stdout as one JSON line (path, auth headers, messages), so the
test reads what the CLI sent, tool results included, from `docker logs`.

Options for the credential broker's tests:
    --bind ADDR                   listen address (default 0.0.0.0); --port 0 picks a free port,
                                  printed in the first line {"ready": PORT}
    --also-port PORT              listen on PORT too, same server and state (the Docker tier's
                                  TLS mock: 8443, and 443 for platform.claude.com's token
                                  endpoint)
    --tls-cert PEM --tls-key PEM  serve HTTPS with that certificate
    --token-endpoint              also answer POST /v1/oauth/token (OAuth refresh, as
                                  platform.claude.com does): a JSON body with grant_type
                                  refresh_token and the current refresh token ($MOCK_REFRESH_TOKEN,
                                  any when unset) gets a new pair (access "mock-refreshed-access-N",
                                  refresh "mock-refreshed-refresh-N", which becomes the current one;
                                  expires_in $MOCK_TOKEN_EXPIRES_IN, default 3600); anything else
                                  gets 400 invalid_grant. Logged as {"path", "grant_type",
                                  "refresh_token", "client_id", "scope", "answer"}.
"""
import argparse
import json
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None
TOKENS = {"current": None, "issued": 0, "lock": threading.Condition()}
REPLIES = {"n": 0, "lock": threading.Lock()}


def last_user_content(body):
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return [{"type": "text", "text": content}]
            return content or []
    return []


def tool_results_since_last_turn(body):
    """The tool_use ids of the tool_results in the user messages after the last assistant
    turn (hook context may come as a message of its own after them)."""
    ids = []
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "assistant":
            break
        content = msg.get("content")
        if isinstance(content, list):
            ids += [b.get("tool_use_id") for b in content
                    if isinstance(b, dict) and b.get("type") == "tool_result"]
    return ids


def bash_tool_use(tool_id, command):
    return [{
        "type": "tool_use",
        "id": tool_id,
        "name": "Bash",
        "input": {"command": command, "description": "probe the sandbox"},
    }], "tool_use"


def wait_for(path, seconds):
    for _ in range(seconds * 10):
        if os.path.exists(path):
            return
        time.sleep(0.1)


def wait_for_refresh(seconds):
    """Until the token endpoint has issued a pair (or `seconds` pass)."""
    with TOKENS["lock"]:
        TOKENS["lock"].wait_for(lambda: TOKENS["issued"] > 0, timeout=seconds)


def escaped_needles(credential):
    """The credential and $MOCK_SEARCH_NEEDLES as one printf %b argument, one a line."""
    needles = [credential] if credential else []
    needles += [n for n in os.environ.get("MOCK_SEARCH_NEEDLES", "").split(",") if n]
    return "\\n".join("".join(f"\\x{b:02x}" for b in n.encode()) for n in needles)


def plan_reply(body, credential=None):
    """Returns (content blocks, stop_reason). `credential`: the token or key the request
    carried."""
    content = last_user_content(body)
    results = tool_results_since_last_turn(body)
    retry_command = os.environ.get("MOCK_RETRY_COMMAND", "id")
    if "toolu_retry_02" in results:
        return [{"type": "text", "text": "MOCK-RETRY-DONE"}], "end_turn"
    if "toolu_retry_01" in results:
        wait_for(os.environ.get("MOCK_RETRY_GATE", "/tmp/retry-gate"), 60)
        return bash_tool_use("toolu_retry_02", retry_command)
    if results:
        return [{"type": "text", "text": "MOCK-TOOL-DONE"}], "end_turn"
    text = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    tools = [t.get("name") for t in body.get("tools") or []]
    if "RETRY-LIVE" in text and "Bash" in tools:
        return bash_tool_use("toolu_retry_01", retry_command)
    if "RUN-SEARCH" in text and "Bash" in tools:
        command = os.environ.get("MOCK_SEARCH_COMMAND", "true")
        return bash_tool_use("toolu_broker_search_01",
                             command.replace("@NEEDLES@", escaped_needles(credential)))
    if "RUN-AFTER-REFRESH" in text and "Bash" in tools:
        wait_for_refresh(60)
        return bash_tool_use("toolu_refresh_read_01", os.environ.get("MOCK_REFRESH_COMMAND", "id"))
    if "RUN-TOOL" in text and "Bash" in tools:
        return bash_tool_use("toolu_sandbox_probe_01", os.environ.get("MOCK_TOOL_COMMAND", "id"))
    return [{"type": "text", "text": "MOCK-ANSWER-42"}], "end_turn"


def sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def send_json(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if ARGS.banner is not None:
            # One write: the probe reads the first segment only, the banner must be in it.
            data = (ARGS.banner + "\n").encode()
            head = (f"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n"
                    f"content-length: {len(data)}\r\n\r\n").encode()
            self.wfile.write(head + data)
            self.close_connection = True
            return
        self.record(None)
        self.send_json(404, {"type": "error",
                             "error": {"type": "not_found_error", "message": self.path}})

    def record(self, body):
        entry = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("authorization"),
            "x-api-key": self.headers.get("x-api-key"),
        }
        if isinstance(body, dict):
            entry["messages"] = body.get("messages")
            entry["tools"] = [t.get("name") for t in body.get("tools") or []]
            entry["stream"] = body.get("stream")
        print(json.dumps(entry), flush=True)

    def token(self, body):
        """The OAuth token endpoint: refresh_token grant only, rotating refresh tokens."""
        with TOKENS["lock"]:
            if TOKENS["current"] is None:
                TOKENS["current"] = os.environ.get("MOCK_REFRESH_TOKEN") or body.get("refresh_token")
            good = (body.get("grant_type") == "refresh_token"
                    and body.get("refresh_token") == TOKENS["current"])
            if good:
                TOKENS["issued"] += 1
                n = TOKENS["issued"]
                TOKENS["current"] = f"mock-refreshed-refresh-{n}"
            entry = {"path": self.path, "grant_type": body.get("grant_type"),
                     "refresh_token": body.get("refresh_token"),
                     "client_id": body.get("client_id"), "scope": body.get("scope"),
                     "answer": 200 if good else 400}
            # Logged before a waiting turn is woken: the log's order is the order served.
            print(json.dumps(entry), flush=True)
            TOKENS["lock"].notify_all()
        if not good:
            self.send_json(400, {"error": "invalid_grant",
                                 "error_description": "refresh token not recognised"})
            return
        self.send_json(200, {"token_type": "Bearer",
                             "access_token": f"mock-refreshed-access-{n}",
                             "refresh_token": TOKENS["current"],
                             "expires_in": int(os.environ.get("MOCK_TOKEN_EXPIRES_IN", "3600")),
                             "scope": body.get("scope") or "user:inference"})

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        path = self.path.split("?", 1)[0]
        if ARGS.token_endpoint and path == "/v1/oauth/token":
            self.token(body)
            return
        self.record(body)
        if ARGS.banner is not None or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self.send_json(404, {"type": "error",
                                 "error": {"type": "not_found_error", "message": self.path}})
            return
        if path.endswith("/count_tokens"):
            self.send_json(200, {"input_tokens": 42})
            return
        auth = self.headers.get("authorization") or ""
        credential = (auth.split(" ", 1)[1].strip() if auth.lower().startswith("bearer ")
                      else self.headers.get("x-api-key"))
        content, stop = plan_reply(body, credential)
        model = body.get("model") or "claude-mock"
        # A fresh id per reply, as the API gives: the CLI merges assistant turns that share one.
        with REPLIES["lock"]:
            REPLIES["n"] += 1
            message_id = f"msg_mock_{REPLIES['n']:02}"
        message = {"id": message_id, "type": "message", "role": "assistant",
                   "model": model, "content": [], "stop_reason": None,
                   "stop_sequence": None,
                   "usage": {"input_tokens": 10, "output_tokens": 1}}
        if not body.get("stream"):
            message.update(content=content, stop_reason=stop)
            self.send_json(200, message)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        out = [sse("message_start", {"type": "message_start", "message": message})]
        for i, block in enumerate(content):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = dict(block, input={})
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            out.append(sse("content_block_start",
                           {"type": "content_block_start", "index": i, "content_block": start}))
            out.append(sse("content_block_delta",
                           {"type": "content_block_delta", "index": i, "delta": delta}))
            out.append(sse("content_block_stop", {"type": "content_block_stop", "index": i}))
        out.append(sse("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": 5}}))
        out.append(sse("message_stop", {"type": "message_stop"}))
        self.wfile.write(b"".join(out))
        self.wfile.flush()
        self.close_connection = True


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--also-port", type=int)
    parser.add_argument("--banner")
    parser.add_argument("--messages", action="store_true")
    parser.add_argument("--bind", default="0.0.0.0")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--token-endpoint", action="store_true")
    ARGS = parser.parse_args()
    servers = [ThreadingHTTPServer((ARGS.bind, port), Handler)
               for port in [ARGS.port] + ([ARGS.also_port] if ARGS.also_port else [])]
    if ARGS.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(ARGS.tls_cert, ARGS.tls_key)
        for server in servers:
            server.socket = context.wrap_socket(server.socket, server_side=True)
    # Each socket listens from here on (a connection waits in its backlog): the main port
    # is the first line, as --port 0 needs.
    for server in servers:
        print(json.dumps({"ready": server.server_address[1]}), flush=True)
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        servers[0].serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
