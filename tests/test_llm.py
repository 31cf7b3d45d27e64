"""Generate-check-repair loop: diagnostics go back to the model, the loop stops when clean."""
from nimm_dsl.llm.client import ScriptedClient
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


def test_extract_model_keeps_a_bare_constrained_reply_whole():
    # A grammar-constrained reply has no fences: comments, blank lines and scenarios stay.
    bare = FIXED.replace("```nimm\n", "").replace("```", "")
    bare = "# a comment\n" + bare + "\nscenario s\n  set k = 0.1 from 2\nend"
    assert extract_model(bare) == bare.strip() + "\n"
