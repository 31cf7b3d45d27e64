"""Prompts come from the package's own tables, and the worked example stays clean."""
from __future__ import annotations

import nimm_dsl
from nimm_dsl.diagnostics import CODES, Diagnostic, Span
from nimm_dsl.grammar.words import BUILTIN_FUNCTIONS, STATEMENT_KEYWORDS
from nimm_dsl.llm.prompts import (STATEMENT_FORMS, diagnostics_text, extract_model, language_guide,
                                  proposal_messages, repair_messages, summarize_table, worked_example)


def test_the_guide_covers_every_statement_built_in_noise_model_and_code():
    assert set(STATEMENT_FORMS) == set(STATEMENT_KEYWORDS)
    guide = language_guide()
    for name in BUILTIN_FUNCTIONS:
        assert f"{name}(" in guide, name
    for noise in ("normal(sigma", "lognormal(sigma", "poisson"):
        assert noise in guide
    for code in CODES:
        assert f"{code}:" in guide, code


def test_the_worked_example_checks_without_errors_or_warnings():
    assert nimm_dsl.check(worked_example()) == []


def test_the_proposal_carries_the_task_the_data_summary_and_the_example():
    messages = proposal_messages("Flu in a school.", "Training table: 3 rows")
    assert "model sei_reported" in messages[0]["content"] and " Gy " in messages[0]["content"]
    assert "Flu in a school." in messages[1]["content"] and "Training table: 3 rows" in messages[1]["content"]


def test_the_data_summary_gives_ranges_missing_values_series_and_first_rows(tmp_path):
    table = tmp_path / "train.csv"
    table.write_text("series,day,cases,lockdown\na,0,3,0\na,1,,0\na,2,10,1\nb,0,4,0\nb,1,7,1\nb,2,12,1\n")
    summary = summarize_table(table)
    assert "train.csv" not in summary  # a file's name can give the answer away
    assert "6 rows" in summary and "2 independent series (a, b)" in summary
    assert "`cases`: integers, from 3 to 12, 1 missing" in summary
    assert "`lockdown`: integers, values 0, 1" in summary
    assert "series,day,cases,lockdown\na,0,3,0\na,1,,0" in summary


def test_repair_diagnostics_are_capped_and_errors_come_first():
    source = "model m\n" + "".join(f"let x{i} = y{i}\n" for i in range(500))
    diagnostics = [Diagnostic("W701", Span(1, 1, 1, 2), "unused")] + [
        Diagnostic("E201", Span(i + 2, 9, i + 2, 11), f"undefined name `y{i}`") for i in range(500)]
    text = diagnostics_text(diagnostics, source, limit=2000)
    assert len(text) < 2600 and text.startswith("<model>:2:9: error[E201]")
    assert text.rstrip().endswith("more")
    repair = repair_messages("task", source, diagnostics, stage="bind")[1]["content"]
    assert "Checked against the training table" in repair and "   2 | let x0 = y0" in repair


def test_extract_model_takes_a_fenced_block_or_a_bare_reply():
    assert extract_model("Sure:\n```nimm\nmodel a\n```\nDone.") == "model a\n"
    assert extract_model("```\nmodel b\n```") == "model b\n"
    assert extract_model("model c\ntime t [day]\n") == "model c\ntime t [day]\n"
