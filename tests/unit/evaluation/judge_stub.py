"""A tiny OpenAI-compatible judge written for the tests: it prefers answers containing GOOD.

Single grading: 9 for a GOOD answer, 2 otherwise, no verdict at all for GARBAGE. Pairwise: the GOOD answer;
with none, always [[A]] (a position-biased judge, which asking in both orders must turn into a tie).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def verdict(prompt: str) -> str:
    if "[Answer A]" in prompt:
        a = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", prompt, re.S)
        b = re.search(r"\[Answer B\]\n(.*?)\n\nWhich", prompt, re.S)
        if a and "GOOD" in a.group(1):
            return "A is better. [[A]]"
        if b and "GOOD" in b.group(1):
            return "B is better. [[B]]"
        return "Hard to say, the first. [[A]]"
    answer = prompt.split("[Answer]\n", 1)[1]
    if "GARBAGE" in answer:
        return "I would rather not say."
    return "Rating: [[9]]" if "GOOD" in answer else "Rating: [[2]]"


@contextmanager
def judge_server(reply_as: str = "ok") -> Iterator[dict[str, Any]]:
    """reply_as: ok; cut (every reply a JSON body cut off half way); drip (a byte every 0.2 s, ~40 s each)."""
    seen: dict[str, Any] = {"auth": [], "requests": 0, "max_tokens": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["auth"].append(self.headers.get("Authorization"))
            seen["requests"] += 1
            seen["max_tokens"].append(body.get("max_tokens"))
            content = verdict(body["messages"][-1]["content"])
            reply = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            data = json.dumps(reply).encode()
            if reply_as == "cut":
                data = data[: len(data) // 2]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if reply_as != "drip":
                self.wfile.write(data)
                return
            for i in range(len(data)):
                try:
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up: what a deadline should make it do
                    return
                time.sleep(0.2)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    seen["url"] = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()
