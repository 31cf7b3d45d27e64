"""The LLM client against a real loopback HTTP server: the `openai` SDK is exercised end to end."""
import json
import logging
import subprocess
import sys

import pytest

from nimm_dsl.cli import main
from nimm_dsl.llm import client as C
from nimm_dsl.llm.client import OpenAIClient, constraint_body, generation_grammar

KEY = "sk-test-0123456789-SECRET"
MESSAGES = [{"role": "user", "content": "write a model"}]
MODEL = "model decay\ntime t [h]\nparam k [1/h] = 0.2 in [0, 1]\nstate x [mg] = 10 in [0, inf]\n" \
        "der(x) = -k * x\nobserve y [mg] = x ~ normal(sigma = 0.1)\n"


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch):
    for name in ("NIMM_LLM_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID",
                 "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS", "OPENAI_LOG"):
        monkeypatch.delenv(name, raising=False)


def client_for(stub, **options):
    options = {"api_key": KEY, "timeout": 5.0, "max_retries": 0, **options}
    return OpenAIClient(stub.url, "stub-model", **options)


@pytest.mark.slow
def test_a_normal_reply_and_what_the_server_receives(llm_stub):
    llm_stub.reply("```nimm\nmodel a\n```", usage={"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49})
    client = client_for(llm_stub)
    assert client.complete(MESSAGES) == "```nimm\nmodel a\n```"
    assert client.last_usage == C.Usage(42, 7, 49)
    (request,) = llm_stub.requests
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.body["model"] == "stub-model" and request.body["messages"] == MESSAGES
    assert request.body["temperature"] == 0.0
    assert not {"grammar", "ebnf", "structured_outputs"} & set(request.body)


def test_the_key_comes_from_the_environment_and_no_key_sends_no_authorization(llm_stub, monkeypatch):
    llm_stub.reply("a").reply("b")
    monkeypatch.setenv("NIMM_LLM_API_KEY", KEY)
    assert OpenAIClient(llm_stub.url, "m", max_retries=0).complete(MESSAGES) == "a"
    monkeypatch.delenv("NIMM_LLM_API_KEY")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-someone-elses")  # never picked up for our endpoint
    monkeypatch.setenv("OPENAI_ORG_ID", "org-someone-elses")
    assert OpenAIClient(llm_stub.url, "m", max_retries=0).complete(MESSAGES) == "b"
    first, second = llm_stub.requests
    assert first.headers["Authorization"] == f"Bearer {KEY}"
    assert "Authorization" not in second.headers and "OpenAI-Organization" not in second.headers
    assert "someone-elses" not in json.dumps(second.headers)


def test_usage_is_none_when_the_server_does_not_report_it(llm_stub):
    llm_stub.reply("a")
    client = client_for(llm_stub)
    client.complete(MESSAGES)
    assert client.last_usage is None


def test_a_timeout_is_our_error_and_within_the_deadline(llm_stub):
    llm_stub.reply("too late", delay=30)  # cut short when the stub stops
    client = client_for(llm_stub, timeout=0.5)
    with pytest.raises(C.LLMTimeout, match="within 0.5 s"):
        client.complete(MESSAGES)


@pytest.mark.slow
def test_the_deadline_covers_retries(llm_stub):
    # Every attempt outlasts the deadline; without it the SDK would make all three attempts.
    for _ in range(3):
        llm_stub.reply("late", delay=30)
    client = client_for(llm_stub, timeout=0.5, max_retries=2)
    with pytest.raises(C.LLMTimeout):
        client.complete(MESSAGES)
    assert len(llm_stub.requests) <= 2  # the deadline stops the retries


@pytest.mark.parametrize("status, body, error, message", [
    (200, b"<html>not json</html>", C.LLMBadReply, "not JSON"),
    (200, {"object": "chat.completion"}, C.LLMBadReply, "no choices"),
    (200, {"choices": []}, C.LLMBadReply, "no choices"),
    (200, {"choices": [{"message": {"content": ["a", "list"]}}]}, C.LLMBadReply, "found list"),
    (200, {"choices": [{"message": {"role": "assistant", "content": None}}]}, C.LLMBadReply, "found NoneType"),
    (200, [1, 2, 3], C.LLMBadReply, "not a JSON object"),
])
def test_garbage_replies_are_bad_replies(llm_stub, status, body, error, message):
    llm_stub.raw(status, body)
    with pytest.raises(error, match=message):
        client_for(llm_stub).complete(MESSAGES)


def test_empty_truncated_and_oversized_replies(llm_stub):
    llm_stub.reply("  \n ")
    llm_stub.reply("model a\nparam k [1", finish_reason="length")
    llm_stub.reply("x" * 1001)
    llm_stub.raw(200, b"{" + b" " * 5000 + b"}")
    client = client_for(llm_stub, max_reply_chars=1000, max_body_bytes=4000)
    with pytest.raises(C.LLMEmptyReply):
        client.complete(MESSAGES)
    with pytest.raises(C.LLMTruncated, match="finish_reason `length`"):
        client.complete(MESSAGES)
    with pytest.raises(C.LLMReplyTooLarge, match="1001 characters"):
        client.complete(MESSAGES)
    with pytest.raises(C.LLMReplyTooLarge, match="larger than 4000 bytes"):
        client.complete(MESSAGES)
    assert all(issubclass(e, C.LLMBadReply) for e in (C.LLMEmptyReply, C.LLMTruncated, C.LLMReplyTooLarge))


def test_http_500_is_retried_then_succeeds(llm_stub):
    llm_stub.raw(500, {"error": {"message": "overloaded"}}, headers={"Retry-After": "100"})
    llm_stub.reply("second time lucky")
    client = client_for(llm_stub, max_retries=1)
    assert client.complete(MESSAGES) == "second time lucky"
    assert len(llm_stub.requests) == 2
    assert llm_stub.requests[1].headers["Authorization"] == f"Bearer {KEY}"


def test_http_errors_without_retries_name_the_status_and_never_the_key(llm_stub):
    llm_stub.raw(401, {"error": {"message": f"bad key {KEY}"}})  # a server that echoes the key
    with pytest.raises(C.LLMHTTPError) as info:
        client_for(llm_stub).complete(MESSAGES)
    assert info.value.status == 401 and "HTTP 401" in str(info.value)
    assert KEY not in str(info.value) and "bad key ***" in str(info.value)


def test_a_redirect_to_another_origin_never_receives_the_key(make_llm_stub):
    endpoint, elsewhere = make_llm_stub(), make_llm_stub()
    elsewhere.reply("stolen")
    endpoint.redirect(f"{elsewhere.url}/chat/completions")
    client = client_for(endpoint)
    with pytest.raises(C.LLMRedirect, match="redirects are not followed") as info:
        client.complete(MESSAGES)
    assert info.value.status == 302
    assert elsewhere.requests == []
    # Second line of defence: even a request built by hand for another origin is refused unsent.
    with pytest.raises(C.LLMConfigError, match="refusing to send"):
        client._http.post(f"{elsewhere.url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert elsewhere.requests == []


@pytest.mark.parametrize("url", ["http://example.com/v1", "http://10.1.2.3:8000/v1", "http://[2001:db8::1]/v1"])
def test_plain_http_to_another_host_is_refused_before_any_request(url, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr("socket.create_connection", no_network)
    with pytest.raises(C.LLMInsecureEndpoint, match="--allow-insecure"):
        OpenAIClient(url, "m", api_key=KEY)
    client = OpenAIClient(url, "m", api_key=KEY, allow_insecure=True)  # allowed, but not called
    assert client.base_url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/v1", "http://localhost:11434/v1", "http://[::1]:8080/v1",
                                 "https://api.example.com/v1"])
def test_loopback_http_and_any_https_are_accepted(url):
    assert C.check_endpoint(url) == url


@pytest.mark.parametrize("url, message", [
    ("ftp://127.0.0.1/v1", "http:// or https://"),
    ("https://user:pass@example.com/v1", "carries credentials"),
    ("127.0.0.1:8000", "http:// or https://"),
    ("", "no endpoint"),
])
def test_unusable_endpoints_are_config_errors(url, message):
    with pytest.raises(C.LLMConfigError, match=message):
        C.check_endpoint(url)


def test_unreachable_endpoint_is_a_connection_error():
    from llm_stub import StubServer

    with StubServer() as stub:
        url = stub.url
    with pytest.raises(C.LLMConnectionError, match="cannot reach"):
        OpenAIClient(url, "m", api_key=KEY, timeout=5, max_retries=0).complete(MESSAGES)


def test_the_key_is_in_no_error_message_or_log(make_llm_stub, caplog):
    caplog.set_level(logging.DEBUG)
    endpoint, elsewhere = make_llm_stub(), make_llm_stub()
    endpoint.raw(500, f"internal error near {KEY}").raw(200, b"garbage").reply("late", delay=30)
    endpoint.redirect(f"{elsewhere.url}/chat/completions")
    client = client_for(endpoint, max_retries=0, timeout=0.5)
    messages = [repr(client)]
    for _ in range(4):
        with pytest.raises(C.LLMError) as info:
            client.complete(MESSAGES)
        messages.append(str(info.value))
    assert len(endpoint.requests) == 4
    assert all(KEY not in m for m in messages), messages
    assert KEY not in caplog.text and caplog.records  # the SDK and httpx did log


@pytest.mark.parametrize("constrain, field, kind", [
    ("vllm", ("structured_outputs", "grammar"), "lark"),
    ("llama-cpp", ("grammar",), "gbnf"),
    ("sglang", ("ebnf",), "gbnf"),
])
def test_constrain_puts_the_grammar_in_the_request_body(llm_stub, constrain, field, kind):
    llm_stub.reply(MODEL)
    client_for(llm_stub, constrain=constrain).complete(MESSAGES)
    value = llm_stub.requests[0].body
    for key in field:
        value = value[key]
    assert value == generation_grammar(kind)
    others = {"structured_outputs", "grammar", "ebnf"} - {field[0]}
    assert not others & set(llm_stub.requests[0].body)


def test_constraint_body_rejects_unknown_servers():
    assert constraint_body("none") == {}
    with pytest.raises(C.LLMConfigError, match="unknown constraint"):
        constraint_body("tgi")


# ---------------------------------------------------------------- the command line
BROKEN = MODEL.replace("-k * x", "-kk * x")


def test_nimm_generate_repairs_against_the_stub(llm_stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NIMM_LLM_API_KEY", KEY)
    llm_stub.reply(f"```nimm\n{BROKEN}```", usage={"prompt_tokens": 100})
    llm_stub.reply(MODEL)  # the repair arrives bare, as a constrained reply would
    out = tmp_path / "m.nimm"
    code = main(["generate", "exponential decay", "--endpoint", llm_stub.url, "--llm", "stub-model",
                 "--output", str(out), "--constrain", "llama-cpp", "--timeout", "10"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_text() == MODEL
    assert len(llm_stub.requests) == 2
    repair_prompt = llm_stub.requests[1].body["messages"][-1]["content"]
    assert "error[E201]" in repair_prompt and "-kk * x" in repair_prompt
    assert all(r.body["grammar"] == generation_grammar("gbnf") for r in llm_stub.requests)
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in llm_stub.requests)
    assert "2 round(s)" in captured.err and KEY not in captured.out + captured.err


def test_nimm_generate_reports_llm_errors_in_one_line(llm_stub, capsys, monkeypatch):
    monkeypatch.setenv("NIMM_LLM_API_KEY", KEY)
    llm_stub.reply("cut", finish_reason="length")
    code = main(["generate", "t", "--endpoint", llm_stub.url, "--llm", "m"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("nimm: error:") and "finish_reason" in err and "Traceback" not in err
    llm_stub.reply(f"```nimm\n{BROKEN}```").reply("", finish_reason="stop")  # a version, then no reply
    code = main(["generate", "t", "--endpoint", llm_stub.url, "--llm", "m"])
    captured = capsys.readouterr()
    assert code == 1 and "-kk * x" in captured.out  # the last version there was
    assert captured.err.rstrip().splitlines()[-1].startswith("nimm: error:") and "is empty" in captured.err
    code = main(["generate", "t", "--endpoint", "http://example.com/v1", "--llm", "m"])
    err = capsys.readouterr().err
    assert code == 1 and "--allow-insecure" in err and KEY not in err


def test_nimm_check_never_imports_the_sdk_or_the_back_ends():
    script = ("import sys; from nimm_dsl.cli import main; code = main(['check', 'examples/flu_sir.nimm']);"
              "print(sorted(m for m in ('openai', 'httpx', 'httpx2', 'torch', 'casadi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout + result.stderr


@pytest.mark.slow
def test_generate_from_a_task_file_repairs_a_wrong_time_name_from_e601(tmp_path, llm_stub, capsys):
    """`nimm generate TASK.toml`: the task's words and table summary go to the model, the first
    version names its clock `t` (E601 against the table's `day`), the second binds and probes."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from agent_tasks import EXPONENTIAL, write_logistic_task

    from nimm_dsl.cli import main

    task = write_logistic_task(tmp_path)
    llm_stub.reply(EXPONENTIAL.replace("time day [day]", "time t [day]"))
    llm_stub.reply(EXPONENTIAL)
    out = tmp_path / "model.nimm"
    assert main(["generate", str(task), "--endpoint", llm_stub.url, "--llm", "m", "--output", str(out)]) == 0
    first = llm_stub.requests[0].body["messages"][-1]["content"]
    assert "closed habitat" in first and "Training table: 21 rows" in first
    repair = llm_stub.requests[1].body["messages"][-1]["content"]
    assert "E601" in repair and "time day [day]" in repair
    assert "time day [day]" in out.read_text()
    assert "binds to the data and probes clean" in capsys.readouterr().err


def test_generate_repairs_a_probe_failure_from_e801(tmp_path, llm_stub, capsys):
    """The first version checks and binds but a log goes negative on day ~6: the probe's E801 at
    the let's line goes back to the model, the second version is clean."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from agent_tasks import EXPONENTIAL, write_logistic_task

    from nimm_dsl.cli import main

    task = write_logistic_task(tmp_path)
    broken = EXPONENTIAL.replace("der(x) = r * x", "let room [1] = log(30 - x)\nder(x) = r * x")
    broken = broken.replace("observe size [1] = x ~", "observe size [1] = x * (1 + 0 * room) ~")
    llm_stub.reply(broken)
    llm_stub.reply(EXPONENTIAL)
    assert main(["generate", str(task), "--endpoint", llm_stub.url, "--llm", "m",
                 "--output", str(tmp_path / "m.nimm")]) == 0
    repair = llm_stub.requests[1].body["messages"][-1]["content"]
    assert "A short simulation at the parameter defaults found" in repair
    line = broken.split("```nimm\n")[1].splitlines().index("let room [1] = log(30 - x)") + 1
    assert f"<generated>:{line}:" in repair.replace(str(tmp_path / "m.nimm"), "<generated>") and "E801" in repair


def test_a_hostile_reply_costs_bounded_work_and_runs_nothing(tmp_path, llm_stub):
    """Thousands of statements pretending to be Python, and towers of powers: parsed, reported,
    never executed; the run ends with an error, not a hang."""
    from nimm_dsl.cli import main

    marker = tmp_path / "pwned"
    hostile = ("```nimm\n" + f"import os; open('{marker}', 'w').write('x')\n" * 1500
               + "const c [1] = 9^9^9\nconst d [1] = 7^(10^8)\n```")
    llm_stub.reply(hostile)
    llm_stub.reply(hostile)
    code = main(["generate", "a model", "--endpoint", llm_stub.url, "--llm", "m", "--rounds", "2",
                 "--output", str(tmp_path / "m.nimm")])
    assert code == 1 and not marker.exists()
    repair = llm_stub.requests[1].body["messages"][-1]["content"]
    assert len(repair) < 60_000  # the diagnostics sent back are capped
