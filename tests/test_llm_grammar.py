"""The whole-file generation grammars (nimm_file.lark for vLLM/llguidance, nimm_file.gbnf for
llama.cpp and SGLang/xgrammar) against the parser, checked offline with both matchers.

Two directions hold and are tested:
  * every shipped example and test model is accepted by both grammars;
  * whatever either grammar accepts parses without E100 (also for mutated statements).
The converse of the second is false on purpose: the grammars are stricter than the parser
(test_intentional_differences lists each difference).
"""
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimm_dsl.grammar import generation
from nimm_dsl.grammar.parser import parse
from nimm_dsl.llm.client import generation_grammar

llguidance = pytest.importorskip("llguidance")
xgrammar = pytest.importorskip("xgrammar")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.nimm"))


def _test_models() -> dict:
    from language_example import FLU
    from test_llm_client import MODEL
    from test_transit_chain import CHAIN, LINE  # shifted subscripts and inline sets in expressions

    models = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLES}
    worked = ROOT / "nimm_dsl" / "llm" / "worked_example.nimm"  # the prompt's worked example
    if worked.is_file():
        models[worked.name] = worked.read_text(encoding="utf-8")
    models["LANGUAGE.md §1"] = FLU
    models["test_llm_client.MODEL"] = MODEL
    models["test_transit_chain.LINE"] = LINE
    models["test_transit_chain.CHAIN"] = CHAIN
    return models


# ---------------------------------------------------------------- the two matchers
_TOKENIZER = llguidance.LLTokenizer("byte")
_LARK = llguidance.LLMatcher.grammar_from_lark(generation_grammar("lark"))
_GBNF = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False).compile_grammar(
    xgrammar.Grammar.from_ebnf(generation_grammar("gbnf")))


_LARK_START = llguidance.LLMatcher(_TOKENIZER, _LARK, log_level=0)  # compiled once, copied per text


def lark_accepts(text: str) -> bool:
    matcher = _LARK_START.deep_copy()
    ok = matcher.consume_tokens(_TOKENIZER.tokenize_str(text))
    return bool(ok) and not matcher.is_error() and matcher.is_accepting()


def gbnf_accepts(text: str) -> bool:
    matcher = xgrammar.GrammarMatcher(_GBNF, terminate_without_stop_token=True)
    return matcher.accept_string(text) and matcher.is_terminated()


def e100(text: str) -> list:
    return [d for d in parse(text)[1] if d.code == "E100"]


def test_both_grammars_are_valid():
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(_LARK, _TOKENIZER)
    assert not is_error and not messages, messages


def test_the_generated_name_rules_are_up_to_date():
    # `python -m nimm_dsl.grammar.generation` rewrites them from grammar.words.KEYWORDS
    lark, gbnf = generation.LARK_PATH.read_text(), generation.GBNF_PATH.read_text()
    assert generation.expected_lark(lark) == lark
    assert generation.expected_gbnf(gbnf) == gbnf


@pytest.mark.parametrize("name, text", sorted(_test_models().items()))
def test_every_example_and_test_model_is_accepted_by_both_grammars(name, text):
    assert not e100(text)
    assert lark_accepts(text), name
    assert gbnf_accepts(text), name
    # the shape of a reply: what extract_model returns, and a file without its final newline
    assert lark_accepts(text.strip()) and gbnf_accepts(text.strip())
    assert lark_accepts(text.replace("\n", "\r\n")) and gbnf_accepts(text.replace("\n", "\r\n"))


@pytest.mark.parametrize("word", sorted(generation.reserved_words()))
def test_a_reserved_word_is_never_a_name(word):
    for accepts in (lark_accepts, gbnf_accepts):
        assert not accepts(f"model m\nlet {word} = 1\n")
        assert accepts(f"model m\nlet x = 1 + {word}\n") == (word == "inf")  # `inf` is a number
        for near in (word[:-1] or "_", word + "s", "_" + word, word + "2", word.upper()):
            assert accepts(f"model m\nlet {near} = 1 + {near}\n") == (near not in generation.reserved_words()), near


def test_an_empty_reply_and_comments_only():
    for text in ("", "\n", "# just a comment\n", "   \n\n"):
        assert lark_accepts(text) and gbnf_accepts(text)


@pytest.mark.parametrize("text, lark, gbnf, why", [
    ("model m\nlet x = (1 +\n  2)\n", False, False, "one statement per line (the parser joins lines in brackets)"),
    ("model m\nlet x = ifelse(not(1 > 2), 1, 2)\n", False, False, "a space after `not`"),
    ("model m\nparam in [1] = 1\n", False, False, "a reserved word as a name (the parser reports E203)"),
    ("model m\nremove D\n", False, False, "`remove` only inside a scenario"),
    ("model m\ndose d: x += 1 at 0 every 1times 3\n", True, False,
     "GBNF has no longest-match lexer: a space before a word keyword that follows a number"),
    ("model m\nflow->S = 1\n", False, False, "a space after `flow` (so `flowS` is never `flow S`)"),
])
def test_intentional_differences(text, lark, gbnf, why):
    assert not e100(text), why
    assert (lark_accepts(text), gbnf_accepts(text)) == (lark, gbnf), why


# ---------------------------------------------------------------- mutated statements
_TOKEN = re.compile(r'"[^"\n]*"|\d+\.\.\d+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|->|\+=|\*=|<=|>=|==|!=|\S')  # `1..10` is one token


def _statements() -> list:
    """(inside a scenario?, tokens) for every statement line of the examples."""
    out = []
    for path in EXAMPLES:
        inside = False
        for line in path.read_text().splitlines():
            code = line.split("#", 1)[0].strip() if '"' not in line else line.strip()
            if code.startswith("#") or not code:
                continue
            tokens = _TOKEN.findall(code.split(" #")[0])
            if tokens[0] == "scenario":
                inside = True
                continue
            if tokens[0] == "end":
                inside = False
                continue
            if tokens[0] != "model":
                out.append((inside, tokens))
    return out


STATEMENTS = _statements()
VOCABULARY = sorted({t for _, tokens in STATEMENTS for t in tokens} | generation.reserved_words()
                    | set("()[],=+-*/^:~<>\"#") | {"1e", "1.", ".5", "->", "not", "end", "\n", "\\"})


def as_file(inside: bool, tokens: list) -> str:
    line = " ".join(tokens)
    return f"model m\nscenario s\n  {line}\nend\n" if inside else f"model m\n{line}\n"


def check_agreement(text: str) -> tuple:
    lark, gbnf = lark_accepts(text), gbnf_accepts(text)
    if lark or gbnf:
        assert not e100(text), (text, "accepted by the " + ("Lark" if lark else "GBNF") + " grammar")
    return lark, gbnf


def test_unmutated_statements_are_accepted_in_both_grammars():
    for inside, tokens in STATEMENTS:
        text = as_file(inside, tokens)
        assert not e100(text), text
        assert check_agreement(text) == (True, True), text


@pytest.mark.slow
def test_single_deletions_agree_with_the_parser():
    accepted = 0
    for k, (inside, tokens) in enumerate(STATEMENTS):
        for i in range(k % 2, len(tokens), 2):  # every other position keeps this under a second
            accepted += any(check_agreement(as_file(inside, tokens[:i] + tokens[i + 1:])))
    assert accepted > 30  # the implication was exercised, not vacuous


@st.composite
def mutated(draw):
    inside, tokens = draw(st.sampled_from(STATEMENTS))
    tokens = list(tokens)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(tokens) - 1)) if tokens else 0
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "insert"]))
        if action == "delete" and tokens:
            del tokens[i]
        elif action == "duplicate" and tokens:
            tokens.insert(i, tokens[i])
        elif action == "replace" and tokens:
            tokens[i] = draw(st.sampled_from(VOCABULARY))
        else:
            tokens.insert(i, draw(st.sampled_from(VOCABULARY)))
    glue = draw(st.sampled_from([" ", ""]))  # also glued tokens: `param k`, `paramk`
    line = glue.join(tokens)
    return f"model m\nscenario s\n  {line}\nend\n" if inside else f"model m\n{line}\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_whatever_a_grammar_accepts_parses_without_e100(text):
    check_agreement(text)
