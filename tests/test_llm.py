"""Generate-check-repair loop: diagnostics go back to the model, the loop stops when clean."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from nimm_dsl.llm.client import LLMError, OpenAICompatibleClient, ScriptedClient
from nimm_dsl.llm.pipeline import generate_model
from nimm_dsl.llm.prompts import extract_model

BROKEN = """```nimm
model decay
time t [h]
param k [1/h] = 0.2 in [0, 1]
state x [mg] = 10 in [0, inf]
der(x) = -kk * x
observe y [mg] = x ~ normal(sigma = 0.1)
```"""
FIXED = BROKEN.replace("-kk * x", "-k * x")


def test_repair_prompt_carries_code_place_and_hint_then_stops_when_clean():
    client = ScriptedClient([BROKEN, FIXED, "never asked"])
    result = generate_model("exponential elimination of a drug", client, max_rounds=3)
    assert result.ok and len(result.rounds) == 2
    assert [d.code for d in result.rounds[0].diagnostics if d.is_error] == ["E201"]
    repair = client.prompts[1][-1]["content"]
    assert "<generated>:5:11: error[E201]" in repair and "did you mean `k`?" in repair
    assert "   5 | der(x) = -kk * x" in repair  # numbered source
    assert client.replies == ["never asked"]


def test_gives_up_after_max_rounds_with_the_last_diagnostics():
    result = generate_model("task", ScriptedClient([BROKEN, BROKEN]), max_rounds=2)
    assert not result.ok and len(result.rounds) == 2
    assert [d.code for d in result.diagnostics if d.is_error] == ["E201"]


def test_extract_model_takes_the_fenced_block_or_the_whole_reply():
    assert extract_model("Here:\n```nimm\nmodel a\n```\nbye").strip() == "model a"
    assert extract_model("model b\n").strip() == "model b"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen = (self.path, self.headers.get("Authorization"), body)
        reply = {"choices": [{"message": {"role": "assistant", "content": FIXED}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_openai_compatible_client_on_loopback():
    server = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.handle_request, daemon=True)
    thread.start()
    try:
        client = OpenAICompatibleClient(f"http://127.0.0.1:{server.server_port}/v1", "m", api_key="k", timeout=10)
        result = generate_model("task", client, max_rounds=1)
    finally:
        thread.join(timeout=10)
        server.server_close()
    path, auth, body = _Handler.seen
    assert result.ok and path == "/v1/chat/completions" and auth == "Bearer k" and body["model"] == "m"


def test_unreachable_endpoint_is_a_clear_error():
    client = OpenAICompatibleClient("http://127.0.0.1:9", "m", timeout=2)
    with pytest.raises(LLMError, match="cannot reach"):
        client.complete([{"role": "user", "content": "hi"}])
