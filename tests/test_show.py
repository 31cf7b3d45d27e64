"""`nimm show`: the compiled equations as LaTeX or text, without internal names."""
import re
from pathlib import Path

import sympy as sp

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


def _balanced(tex: str) -> bool:
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def test_latex_of_every_example_is_free_of_internal_names_and_balanced(capsys):
    import re

    for path in sorted((Path(SEIR).parent).glob("*.nimm")):
        assert main(["show", str(path)]) == 0, path
        tex = capsys.readouterr().out
        assert "#" not in tex and _balanced(tex), path.name
        # a name of several letters is never a product of italic letters: `\mathrm{...}` or a command
        assert not re.search(r"(?<![\\{A-Za-z])[a-z]{3,}(?![A-Za-z}])", re.sub(r"\\[A-Za-z]+\{[^}]*\}|\\[A-Za-z]+", "", tex)), path.name


def test_latex_reads_with_the_users_names_and_shows_inputs_as_inputs(capsys):
    assert main(["show", SEIR]) == 0
    tex = capsys.readouterr().out
    assert r"\mathrm{infection} &= \frac{I S \beta \mathrm{mobility}(\mathrm{day})}{\mathrm{population}}" in tex
    assert r"\mathrm{mobility}(\mathrm{day}) &: \text{input (linear interpolation, default 1)}" in tex
    assert r"\text{scenario late\_lockdown},\ 44 \le \mathrm{day} < 104" in tex
    from nimm_dsl.compiler.lower import latex_name

    assert [latex_name(n) for n in ("I0", "beta", "beta_eff", "ka", "x")] == [
        "I_{0}", r"\beta", r"\mathrm{beta\_eff}", r"\mathrm{ka}", "x"]


def test_latex_pulls_unit_factors_out_of_sums(capsys):
    """Hodgkin-Huxley's currents are declared in uA/cm^2 from mS/cm^2 times mV: lowering spreads the
    factor over the sum (`1000 g (V/1000 - E/1000)`); shown, it is `g (V - E)` again."""
    assert main(["show", str(Path(SEIR).parent / "hodgkin_huxley.nimm")]) == 0
    tex = capsys.readouterr().out
    assert r"\mathrm{I\_Na} &= \mathrm{g\_Na} h m^{3} \left(- \mathrm{E\_Na} + V\right)" in tex
    assert r"\frac{- \mathrm{I\_K} - \mathrm{I\_L} - \mathrm{I\_Na} + \mathrm{I\_ext}(t)}{\mathrm{C\_m}}" in tex
    assert "1000 \\mathrm{g" not in tex


FAMILY = """model ring
time t [day]
index patch = 1..3
param k [1/day] = 0.3 in [0.01, 1]
state X[p in patch] [1] = 1
der(X[p]) = k * (sum(q in patch, exp(-abs(p - q) / 3) * X[q]) - X[p] / 3)
"""


def test_folded_decimals_show_as_decimals_and_plain_fractions_stay(tmp_path, capsys):
    path = tmp_path / "ring.nimm"
    path.write_text(FAMILY)
    assert main(["show", str(path), "--format", "text"]) == 0
    # exp(-1/3), folded exactly, is not shown as 7165313105737893/10^16; 1 - 1/3 stays a fraction
    assert "dX[2]/dt = k*(0.716531*X[1] + 2*X[2]/3 + 0.716531*X[3])" in capsys.readouterr().out
    assert main(["show", str(path), "--format", "latex"]) == 0
    tex = capsys.readouterr().out
    assert "7165313105737893" not in tex and "10^{" not in tex


def test_a_family_shows_its_first_two_elements_a_count_and_its_last_unless_all(tmp_path, capsys):
    path = tmp_path / "ring.nimm"
    path.write_text(FAMILY.replace("1..3", "1..6"))
    assert main(["show", str(path), "--format", "text"]) == 0
    out = capsys.readouterr().out
    assert [line.split(" = ")[0] for line in out.splitlines() if line.startswith("dX")] == \
        ["dX[1]/dt", "dX[2]/dt", "dX[6]/dt"]
    assert "    ... 3 more elements of X alike (`nimm show --all` lists them)" in out
    assert main(["show", str(path), "--format", "text", "--all"]) == 0
    assert sum(line.startswith("dX") for line in capsys.readouterr().out.splitlines()) == 6
    assert main(["show", str(path)]) == 0
    tex = capsys.readouterr().out
    assert r"&\vdots && \text{3 more elements of X alike}" in tex and _balanced(tex)


def test_a_hidden_element_never_reads_differently_from_those_shown(tmp_path, capsys):
    path = tmp_path / "chain.nimm"
    path.write_text("model chain\ntime t [h]\nindex stage = 1..8\nparam k [1/h] = 1 in [0.1, 10]\n"
                    "param kx [1/h] = 0.5 in [0.1, 10]\nstate T[s in stage] [mg] = 1\n"
                    "flow T[s in 1..7] -> T[s+1] = k * T[s]\nflow T[5] -> = kx * T[5]\nobserve y [mg] = T[8]\n")
    assert main(["show", str(path), "--format", "text"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("dT[")]
    assert [r.split("/dt")[0] for r in rows] == ["dT[1]", "dT[2]", "dT[5]", "dT[8]"] and "kx" in rows[2]
    assert "... 4 more elements of T alike" in out  # stages 3, 4, 6 and 7 read like stage 2


def test_unit_conversions_stay_fractions(tmp_path, capsys):
    path = tmp_path / "pk.nimm"
    path.write_text("model pk\ntime t [h]\nparam k [1/h] = 0.5 in [0.01, 2]\nstate A [mg] = 10\n"
                    "der(A) = -k * A\nlet out_s [mg/s] = k * A\nobserve y [mg] = A\n")
    assert main(["show", str(path), "--format", "text"]) == 0
    assert "out_s = A*k/3600" in capsys.readouterr().out


TWELVE = """model twelve
time t [day]
index patch = 1..12
index age = [senior, child, adult]
param k [1/day] = 0.3 in [0.01, 1]
state X[p in patch] [1] = 1
state Y[a in age] [1] = 1
der(X[p]) = -k * X[p] + k / 12 * sum(q in patch, X[q])
der(Y[a]) = -k * Y[a] + k * sum(b in age, Y[b])
observe x[p in patch] [1] = X[p]
observe y[a in age] [1] = Y[a]
"""


def test_elements_show_in_member_order_not_as_text(tmp_path, capsys):
    """`X[10]` after `X[9]`, not before `X[1]`; named members in the order the index declares them."""
    path = tmp_path / "twelve.nimm"
    path.write_text(TWELVE)
    assert main(["show", str(path), "--format", "text", "--all"]) == 0
    out = capsys.readouterr().out
    every = " + ".join(f"X[{p}]" for p in range(1, 13))
    assert f"dX[2]/dt = -X[2]*k + k*({every})/12    [1/day]" in out
    assert "dY[child]/dt = -Y[child]*k + k*(Y[senior] + Y[child] + Y[adult])    [1/day]" in out
    rows = [line.split("/dt")[0] for line in out.splitlines() if line.startswith("dX")]
    assert rows == [f"dX[{p}]" for p in range(1, 13)]
    # lets are computed in dependency order (g[1], f[1], g[2], ...); shown, each family is together
    path.write_text(TWELVE.replace("der(X[p]) = -k * X[p]", "der(X[p]) = -f[p]")
                    + "let f[p in patch] [1/day] = k * g[p]\nlet g[p in patch] [1] = X[p]\n")
    assert main(["show", str(path), "--format", "text"]) == 0
    out = capsys.readouterr().out
    rows = ["..." if line.lstrip().startswith("...") else line.split(" = ")[0]
            for line in out[:out.index("dX[1]")].splitlines()]
    assert rows == ["g[1]", "g[2]", "...", "g[12]", "f[1]", "f[2]", "...", "f[12]"], rows
    path.write_text(TWELVE)
    assert main(["show", str(path), "--format", "latex"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(r"\frac{\mathrm{d}\mathrm{X[2]}}"))
    rhs = row.split("&=")[1]
    assert [int(p) for p in re.findall(r"\\mathrm\{X\[(\d+)\]\}", rhs)] == list(range(1, 13)), row


MIXED_UNITS = """model mixed
time t [h]
index patch = 1..20
const w[p in patch] [g] = 2 + p
param k [1/h] = 0.3 in [0.01, 1]
state X[p in patch] [mg] = 1
der(X[p]) = -k * X[p] + k * w[p] / 20 * sum(q in patch, X[q] / w[q])
observe y[p in patch] [mg] = X[p]
"""


def test_unit_factors_that_cancel_show_multiplied_out(tmp_path, capsys):
    """A long sum is lowered without sympy's arithmetic, so the mg and g scales of `X[q] / w[q]`
    stay apart in the IR (`X[3]*(1/1000000)*(1000/w[3])`); shown, they are one factor."""
    import random

    import sympy as sp

    import nimm_dsl
    from nimm_dsl.compiler.lower import _display

    path = tmp_path / "mixed.nimm"
    path.write_text(MIXED_UNITS)
    assert main(["show", str(path), "--format", "text"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("dX[2]/dt"))
    assert "1000000" not in row and "X[3]/(1000*w[3])" in row, row
    # a scalar sum written out (16 terms or more) is lowered the same way
    consts = "".join(f"const c{i} [g] = {i + 1}\n" for i in range(16))
    path.write_text("model longs\ntime t [h]\nparam k [1/h] = 0.3 in [0.01, 1]\nconst w [g] = 2\nstate X [mg] = 1\n"
                    + consts + "der(X) = -k * X + k * w * (" + " + ".join(f"c{i} / w" for i in range(16)) + ")\n"
                    "observe y [mg] = X\n")
    assert main(["show", str(path), "--format", "text"]) == 0
    row = capsys.readouterr().out.splitlines()[0]
    assert row.startswith("dX/dt = -X*k + 1000*k*w*(c0/w + c1/w + ") and "(1/1000)" not in row, row
    # display only: the IR the back ends evaluate is not rebuilt, and the shown form has its value
    ir = nimm_dsl.load_source(MIXED_UNITS).ir
    lowered = ir.derivatives["X[2]"]
    before = sp.srepr(lowered)
    shown = _display()(lowered)
    assert sp.srepr(ir.derivatives["X[2]"]) == before and sp.Rational(1, 1000000) in lowered.atoms(sp.Rational)
    rng = random.Random(1)
    values = {s.name: rng.uniform(0.5, 2) for s in lowered.free_symbols}
    at = lambda e: float(e.xreplace({s: values[s.name] for s in e.free_symbols}))  # noqa: E731
    assert abs(at(shown) - at(lowered)) <= 1e-12 * abs(at(lowered))


def test_a_kernel_row_shows_as_its_terms_with_their_factors_multiplied_out(tmp_path, capsys):
    """A long mixing sum is one IR node (linear_forms.KernelRow) whose weights and entries carry
    their unit factors apart; shown, it reads as the terms a reader would write: no `1*` weight,
    one factor per term."""
    import nimm_dsl
    from nimm_dsl.compiler.linear_forms import KernelRow

    path = tmp_path / "kernel.nimm"
    path.write_text("model kernel\ntime t [h]\nindex patch = 1..20\nconst w[p in patch] [g] = 2 + p\n"
                    "param k [1/h] = 0.3 in [0.01, 1]\nstate X[p in patch] [mg] = 1\n"
                    "der(X[p]) = -k * X[p] + k * w[p] * sum(q in patch, exp(-abs(p - q) / 3) * X[q] / w[q])\n"
                    "observe y[p in patch] [mg] = X[p]\n")
    ir = nimm_dsl.load(str(path)).ir
    assert any(isinstance(node, KernelRow) for node in sp.preorder_traversal(ir.derivatives["X[1]"]))
    assert main(["show", str(path), "--format", "text"]) == 0
    row = capsys.readouterr().out.splitlines()[0]
    assert row.startswith("dX[1]/dt = -X[1]*k + 1000*k*w[1]*(X[1]/(1000*w[1]) + ") and "(1/1000)" not in row, row
    terms = row.split("(", 1)[1].split(" + ")
    assert [re.search(r"X\[(\d+)\]", t).group(1) for t in terms] == [str(q) for q in range(1, 21)], row
