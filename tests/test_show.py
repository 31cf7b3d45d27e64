"""`nimm show`: the compiled equations as LaTeX or text, without internal names."""
from pathlib import Path

from nimm_dsl.cli import main

SEIR = str(Path(__file__).resolve().parents[1] / "examples" / "seir.nimm")


def test_text_equations_name_inputs_not_their_segment_coefficients(capsys):
    assert main(["show", SEIR, "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert "infection = I*S*beta*mobility/population    [person/day]" in out
    assert "dE/dday = -E*sigma + infection    [person/day]" in out
    assert "mobility <- 3/10    scenario lockdown, 30 <= day < 90" in out
    assert "#" not in out


def test_latex_is_the_default_and_latex_flag_is_an_alias(capsys):
    assert main(["show", SEIR]) == 0
    default = capsys.readouterr().out
    assert main(["show", SEIR, "--latex"]) == 0
    assert capsys.readouterr().out == default
    assert default.startswith("\\begin{aligned}") and "#" not in default
