#!/usr/bin/env python3
"""Fixture of the Docker tier (tests/docker.rs): a mock of the Anthropic Messages API, or a
plain host that answers every GET with a banner.

    mock_api.py --port 8080 --messages      the Messages API mock
    mock_api.py --port 80 --banner TEXT     any GET answers TEXT (an "allowed"/"blocked" host)

The mock answers POST /v1/messages (streaming SSE or JSON) and /v1/messages/count_tokens,
and 404 JSON for everything else. Replies:
  - the last user turn holds a tool_result          -> text "MOCK-TOOL-DONE"
  - the last user text holds RUN-TOOL and the Bash tool is offered
                                                    -> a Bash tool_use running $MOCK_TOOL_COMMAND
  - anything else                                   -> text "MOCK-ANSWER-42"
Every request is printed to stdout as one JSON line (path, auth headers, messages), so the
test reads what the CLI sent, tool results included, from `docker logs`.
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARGS = None


def last_user_content(body):
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return [{"type": "text", "text": content}]
            return content or []
    return []


def plan_reply(body):
    """Returns (content blocks, stop_reason)."""
    content = last_user_content(body)
    if any(block.get("type") == "tool_result" for block in content):
        return [{"type": "text", "text": "MOCK-TOOL-DONE"}], "end_turn"
    text = " ".join(b.get("text", "") for b in content if b.get("type") == "text")
    tools = [t.get("name") for t in body.get("tools") or []]
    if "RUN-TOOL" in text and "Bash" in tools:
        command = os.environ.get("MOCK_TOOL_COMMAND", "id")
        return [{
            "type": "tool_use",
            "id": "toolu_sandbox_probe_01",
            "name": "Bash",
            "input": {"command": command, "description": "probe the sandbox"},
        }], "tool_use"
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

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        self.record(body)
        path = self.path.split("?", 1)[0]
        if ARGS.banner is not None or path not in ("/v1/messages", "/v1/messages/count_tokens"):
            self.send_json(404, {"type": "error",
                                 "error": {"type": "not_found_error", "message": self.path}})
            return
        if path.endswith("/count_tokens"):
            self.send_json(200, {"input_tokens": 42})
            return
        content, stop = plan_reply(body)
        model = body.get("model") or "claude-mock"
        message = {"id": "msg_mock_01", "type": "message", "role": "assistant",
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
    parser.add_argument("--banner")
    parser.add_argument("--messages", action="store_true")
    ARGS = parser.parse_args()
    server = ThreadingHTTPServer(("0.0.0.0", ARGS.port), Handler)
    print(json.dumps({"ready": ARGS.port}), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
