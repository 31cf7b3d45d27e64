"""CasADi back end against closed forms and scipy on hand-written right-hand sides.

Models are built as ModelIRs by hand (independent of the front end), plus every shipped example
under every scenario it declares.
"""
from pathlib import Path

import casadi as ca
import numpy as np
import pytest
import sympy as sp
from scipy.integrate import solve_ivp

from nimm_dsl.backends.casadi_backend import compile_casadi
from nimm_dsl.compiler.ir import (DoseIR, InputIR, LetIR, ModelIR, NeuralIR, ObserveIR, ParamIR,
                                  ScenarioIR, SetIR, StateIR)
from nimm_dsl.errors import SimulationError

TIGHT = dict(rtol=1e-10, atol=1e-12)
t = sp.Symbol("t", real=True)


def P(name, default, lo=0.0, hi=np.inf, unit="1"):
    return ParamIR(name, sp.Symbol(name, real=True), default, lo, hi, unit, True)


def S(name, init, lo=-np.inf, hi=np.inf, unit="1"):
    return StateIR(name, sp.Symbol(name, real=True), sp.sympify(init), lo, hi, unit)


def O(name, expr, unit="1"):
    return ObserveIR(name, sp.Symbol(name, real=True), expr, unit, "normal")


def model(states, params, der, **kw):
    return ModelIR("m", None, t, "t", "day", states=states, params=params,
                   derivatives={s.name: der[s.name] for s in states}, **kw)


def sym(name):
    return sp.Symbol(name, real=True)


# ------------------------------------------------------------------ closed forms
def test_exponential_decay_closed_form_and_dose_at_output_time():
    x, k, x0 = sym("x"), sym("k"), sym("x0")
    ir = model([S("x", x0)], [P("k", 0.7), P("x0", 3.0)], {"x": -k * x},
               observes=[O("twice", 2 * x)],
               doses=[DoseIR("bolus", "x", "+", sp.Integer(1), [1.0])])
    ts = np.linspace(0, 4, 9)  # includes the dose time 1.0
    res = compile_casadi(ir).simulate(ts, params={"k": 0.4}, **TIGHT)
    ref = 3.0 * np.exp(-0.4 * ts) + (ts >= 1.0) * np.exp(-0.4 * (ts - 1.0))
    np.testing.assert_allclose(res["x"], ref, rtol=1e-7)
    np.testing.assert_allclose(res["twice"], 2 * ref, rtol=1e-7)
    assert res["x"][2] == pytest.approx(3.0 * np.exp(-0.4) + 1.0, rel=1e-8)  # after the dose
    assert list(res.to_frame().columns) == ["t", "x", "twice"]


def test_logistic_growth_closed_form():
    n, r, K = sym("n"), sym("r"), sym("K")
    ir = model([S("n", 2)], [P("r", 0.9), P("K", 100.0)], {"n": r * n * (1 - n / K)})
    ts = np.linspace(0, 15, 31)
    res = compile_casadi(ir).simulate(ts, **TIGHT)
    ref = 100.0 / (1 + (100.0 / 2 - 1) * np.exp(-0.9 * ts))
    np.testing.assert_allclose(res["n"], ref, rtol=1e-7)


def test_oral_pk_repeated_doses_by_superposition_of_bateman():
    gut, cen, ka, ke, V = sym("gut"), sym("cen"), sym("ka"), sym("ke"), sym("V")
    dose_times = [0.0, 12.0, 24.0, 36.0]
    ir = model([S("gut", 0, 0), S("cen", 0, 0)], [P("ka", 1.2), P("ke", 0.15), P("V", 30.0)],
               {"gut": -ka * gut, "cen": ka * gut - ke * cen},
               observes=[O("conc", cen / V, "mg/L")],
               doses=[DoseIR("oral", "gut", "+", sp.Integer(100), dose_times)])
    ts = np.linspace(0, 60, 121)
    res = compile_casadi(ir).simulate(ts, **TIGHT)
    ref = np.zeros_like(ts)
    for td in dose_times:
        dt = np.clip(ts - td, 0, None)
        ref += (ts >= td) * 100 * 1.2 / (30.0 * (1.2 - 0.15)) * (np.exp(-0.15 * dt) - np.exp(-1.2 * dt))
    np.testing.assert_allclose(res["conc"], ref, rtol=1e-6, atol=1e-12)


# ------------------------------------------------------------------ against scipy
def scipy_ref(rhs, y0, ts):
    sol = solve_ivp(rhs, (ts[0], ts[-1]), y0, t_eval=ts, method="DOP853", rtol=1e-10, atol=1e-12)
    assert sol.success
    return sol.y


def sir_ir():
    S_, I_, R_, beta, gamma, N = sym("S"), sym("I"), sym("R"), sym("beta"), sym("gamma"), sym("N")
    inf = sym("infection")
    return model([S("S", N - 1, 0), S("I", 1, 0), S("R", 0, 0)],
                 [P("beta", 1.7), P("gamma", 0.45), ParamIR("N", N, 763.0, 0, np.inf, "person", False)],
                 {"S": -inf, "I": inf - gamma * I_, "R": gamma * I_},
                 lets=[LetIR("infection", inf, beta * S_ * I_ / N, "person/day")],
                 observes=[O("in_bed", I_)])


def test_sir_against_scipy_with_lets_and_observes():
    ts = np.linspace(0, 14, 57)
    res = compile_casadi(sir_ir()).simulate(ts, params={"beta": 1.9}, **TIGHT)

    def rhs(_, y):
        s, i, _r = y
        inf = 1.9 * s * i / 763.0
        return [-inf, inf - 0.45 * i, 0.45 * i]

    ref = scipy_ref(rhs, [762.0, 1.0, 0.0], ts)
    for j, name in enumerate(["S", "I", "R"]):
        np.testing.assert_allclose(res[name], ref[j], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res["infection"], 1.9 * ref[0] * ref[1] / 763.0, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(res["in_bed"], ref[1], rtol=1e-6, atol=1e-8)
    assert res.names == ["S", "I", "R", "infection", "in_bed"]


@pytest.mark.parametrize("method", ["cvodes", "adams", "idas", "rk"])
def test_ifelse_model_against_scipy_for_each_method(method):
    x, k = sym("x"), sym("k")
    # kinked right-hand side: fast decay above 1, slow below
    der = -k * sp.Piecewise((x ** 2, sp.StrictGreaterThan(x, 1)), (x, True)) + sp.sin(t)
    ir = model([S("x", 3)], [P("k", 0.8)], {"x": der})
    ts = np.linspace(0, 6, 25)
    opts = {"finite_elements": 400} if method == "rk" else {}
    res = compile_casadi(ir, method=method, **opts).simulate(ts, **TIGHT)
    ref = scipy_ref(lambda tt, y: [-0.8 * (y[0] ** 2 if y[0] > 1 else y[0]) + np.sin(tt)], [3.0], ts)
    np.testing.assert_allclose(res["x"], ref[0], rtol=1e-6 if method != "rk" else 1e-5)


# ------------------------------------------------------------------ protocol features
def windows_ir():
    """k overridden by two overlapping set windows (the later line wins), folded as lower.py does."""
    x, k = sym("x"), sym("k")
    f1, f2 = sym("__set0"), sym("__set1")
    k_eff = sp.Piecewise((0 * k, f2 > 0.5), (sp.Piecewise((2 * k, f1 > 0.5), (k, True)), True))
    sets = [SetIR("k", f1, 2 * k, 1.0, 4.0, None), SetIR("k", f2, sp.Integer(0), 2.0, 3.0, None)]
    return model([S("x", 1)], [P("k", 0.5)], {"x": -k_eff * x}, sets=sets)


def test_overlapping_set_windows_later_line_wins():
    ts = np.linspace(0, 5, 11)
    res = compile_casadi(windows_ir()).simulate(ts, **TIGHT)

    def rate_integral(tt):  # integral of k_eff over [0, tt]: k on [0,1), 2k on [1,2), 0 on [2,3), 2k on [3,4), k after
        pieces = [(0, 1, 0.5), (1, 2, 1.0), (2, 3, 0.0), (3, 4, 1.0), (4, np.inf, 0.5)]
        return sum(r * max(0.0, min(tt, b) - a) for a, b, r in pieces)

    np.testing.assert_allclose(res["x"], [np.exp(-rate_integral(v)) for v in ts], rtol=1e-7)


def test_scenario_removes_and_replaces_doses():
    x, k = sym("x"), sym("k")
    base = [DoseIR("a", "x", "+", sp.Integer(1), [1.0]), DoseIR("b", "x", "*", sp.Float(0.5), [2.0])]
    scen = {"no_a": ScenarioIR("no_a", None, [], ["a"]),
            "big_b": ScenarioIR("big_b", None, [DoseIR("b", "x", "*", sp.Float(0.1), [2.0])], [])}
    ir = model([S("x", 1)], [P("k", 0.3)], {"x": -k * x}, doses=base, scenarios=scen)
    sim = compile_casadi(ir)
    ts = np.array([0.0, 1.5, 2.0, 3.0])
    e = lambda dt: np.exp(-0.3 * dt)  # noqa: E731
    base_ref = [1, e(1.5) + e(0.5), 0.5 * (e(2) + e(1)), 0.5 * (e(3) + e(2))]
    no_a_ref = [1, e(1.5), 0.5 * e(2), 0.5 * e(3)]
    big_b_ref = [1, e(1.5) + e(0.5), 0.1 * (e(2) + e(1)), 0.1 * (e(3) + e(2))]
    np.testing.assert_allclose(sim.simulate(ts, **TIGHT)["x"], base_ref, rtol=1e-7)
    np.testing.assert_allclose(sim.simulate(ts, scenario="no_a", **TIGHT)["x"], no_a_ref, rtol=1e-7)
    np.testing.assert_allclose(sim.simulate(ts, scenario="big_b", **TIGHT)["x"], big_b_ref, rtol=1e-7)
    with pytest.raises(ValueError, match="unknown scenario `no-a`"):
        sim.simulate(ts, scenario="no-a")
    with pytest.raises(ValueError, match="unknown parameter"):
        sim.simulate(ts, params={"kk": 1.0})


def test_linear_and_step_inputs():
    x, y = sym("x"), sym("y")
    u = InputIR("u", sym("u"), (sym("u_a"), sym("u_b")), None, "linear", "1")
    v = InputIR("v", sym("v"), (sym("v_a"), sym("v_b")), 2.0, "step", "1")
    ir = model([S("x", 0), S("y", 0)], [], {"x": u.coef[0] + u.coef[1] * t, "y": v.coef[0] + v.coef[1] * t},
               inputs=[u, v])
    ts = np.linspace(0, 5, 11)
    data = {"u": ([1.0, 3.0], [0.0, 4.0]), "v": ([0.0, 2.5], [1.0, 3.0])}
    res = compile_casadi(ir).simulate(ts, inputs=data, **TIGHT)
    # u: 0 before 1, then slope 2 up to 4 at t=3, then held at 4
    u_int = np.where(ts < 1, 0, np.where(ts < 3, (ts - 1) ** 2, 4 + 4 * (ts - 3)))
    v_int = np.where(ts < 2.5, ts, 2.5 + 3 * (ts - 2.5))
    np.testing.assert_allclose(res["x"], u_int, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(res["y"], v_int, rtol=1e-8, atol=1e-10)
    # without data the declared default applies to v; u has none
    with pytest.raises(SimulationError, match="`u`"):
        compile_casadi(ir).simulate(ts)


# ------------------------------------------------------------------ failures and warnings
@pytest.mark.slow
@pytest.mark.parametrize("method", ["cvodes", "rk"])
def test_blow_up_raises_simulation_error_with_time_and_state(method):
    x = sym("x")
    ir = model([S("x", 1)], [], {"x": x ** 2})  # x = 1/(1-t): blows up at t = 1
    with pytest.raises(SimulationError) as err:
        compile_casadi(ir, method=method).simulate(np.linspace(0, 2, 21))
    msg = str(err.value)
    assert "integration failed at t = " in msg and "last good state" in msg and "x = " in msg
    t_fail = float(msg.split("integration failed at t = ")[1].split()[0])
    # adaptive steps stop at the singularity; fixed steps overshoot by up to an output interval
    assert 0.95 <= t_fail <= (1.01 if method == "cvodes" else 1.2)


def test_nan_in_right_hand_side_is_reported_near_its_time():
    x = sym("x")
    # x = 1 - t; the tiny log term is NaN once x < 0, i.e. after t = 1
    ir = model([S("x", 1)], [], {"x": -1 + sp.Float(1e-300) * sp.log(x)})
    with pytest.raises(SimulationError, match=r"at t = 1(\.0*\d*)? day"):
        compile_casadi(ir).simulate(np.linspace(0, 3, 4))


def test_domain_warning_names_state_and_first_time():
    x = sym("x")
    ir = model([S("x", 1, lo=0)], [], {"x": sp.Integer(-1)})
    res = compile_casadi(ir).simulate(np.linspace(0, 2, 5))
    assert len(res.warnings) == 1
    assert "state x" in res.warnings[0] and "t = 1.5 day" in res.warnings[0]
    assert compile_casadi(ir).simulate([0.0, 1.0]).warnings == []


# ------------------------------------------------------------------ the symbolic chain for fitting
def test_trajectory_function_matches_simulate_and_finite_difference_gradient():
    gut, cen, ka, ke, V = sym("gut"), sym("cen"), sym("ka"), sym("ke"), sym("V")
    ir = model([S("gut", 0, 0), S("cen", 0, 0)], [P("ka", 1.2), P("ke", 0.15), P("V", 30.0)],
               {"gut": -ka * gut, "cen": ka * gut - ke * cen},
               observes=[O("conc", cen / V)],
               doses=[DoseIR("oral", "gut", "+", 5 * V + 100, [0.0, 5.0])])  # amount uses a param
    sim = compile_casadi(ir, **TIGHT)
    ts = np.linspace(0, 10, 11)
    F = sim.trajectory_function(sim.protocol(ts))
    p0 = sim.param_vector({"ka": 0.9})
    y, z = F(p0, sim.weight_vector())
    res = sim.simulate(ts, params={"ka": 0.9})
    np.testing.assert_allclose(np.asarray(y).ravel(), res["conc"], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(z)[1], res["cen"], rtol=1e-10)
    # gradient of a scalar loss through the integrator (MX symbols) vs central differences
    p = ca.MX.sym("p", 3)
    loss = ca.sumsqr(F(p, ca.DM.zeros(0))[0])
    grad = ca.Function("g", [p], [ca.gradient(loss, p)])
    g = np.asarray(grad(p0)).ravel()
    lossf = ca.Function("l", [p], [loss])
    for i in range(3):
        h = 1e-5 * p0[i]
        e = np.zeros(3)
        e[i] = h
        fd = (float(lossf(p0 + e)) - float(lossf(p0 - e))) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-5)


def test_integrators_are_reused_across_calls():
    sim = compile_casadi(sir_ir())
    ts = np.linspace(0, 10, 21)
    sim.simulate(ts)
    cached = dict(sim._integrators)
    sim.simulate(ts, params={"beta": 1.0})
    sim.trajectory_function(sim.protocol(ts))
    assert dict(sim._integrators) == cached


def test_neural_term_matches_numpy_mlp():
    x = sym("x")
    resid = sp.Function("resid")
    nir = NeuralIR("resid", resid, 1, [4], "tanh", "random", 0.0, "1/day")
    ir = model([S("x", 0.5)], [], {"x": -x + resid(x)}, neurals=[nir])
    w = nir.initial_weights(3)

    def mlp(v):
        (W1, b1), (W2, b2) = nir.unpack(w)
        return (W2 @ np.tanh(W1 @ np.array([v]) + b1) + b2)[0]

    ts = np.linspace(0, 3, 7)
    res = compile_casadi(ir).simulate(ts, weights={"resid": w}, **TIGHT)
    ref = scipy_ref(lambda _, y: [-y[0] + mlp(y[0])], [0.5], ts)
    np.testing.assert_allclose(res["x"], ref[0], rtol=1e-7)
    with pytest.raises(ValueError, match="unknown neural"):
        compile_casadi(ir).simulate(ts, weights={"other": w})


def test_static_model_over_a_table():
    a, b, u = sym("a"), sym("b"), sym("u")
    inp = InputIR("u", u, (sym("u_a"), sym("u_b")), None, "step", "1")
    w_in = InputIR("w", sym("w"), (sym("w_a"), sym("w_b")), 10.0, "step", "1")
    ir = ModelIR("static", None, None, None, None, params=[P("a", 2.0), P("b", 1.0)],
                 inputs=[inp, w_in], observes=[O("y", a * u + b * sym("w"))])
    res = compile_casadi(ir).simulate(inputs={"u": [0.0, 1.0, 2.0]}, params={"b": 0.5})
    np.testing.assert_allclose(res["y"], [5.0, 7.0, 9.0])
    with pytest.raises(SimulationError, match="`u`"):
        compile_casadi(ir).simulate(inputs={"w": [1.0]})


# ------------------------------------------------------------------ shipped examples (front end + back end)
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name):
    import nimm_dsl

    return nimm_dsl.load(EXAMPLES / name)


def test_mixed_units_pk_oral_against_bateman_superposition():
    # clock in hours, clearance in L/day: ke = CL / V / 24 per hour
    sim = load_example("pk_oral.nimm").compile("casadi")
    ts = np.linspace(0, 72, 145)
    ka, V, CL = 1.6, 33.0, 67.0
    ke = CL / V / 24.0

    def bateman(dose_times, amount=300.0):
        c = np.zeros_like(ts)
        for td in dose_times:
            dt = np.clip(ts - td, 0, None)
            c += (ts >= td) * amount * ka / (V * (ka - ke)) * (np.exp(-ke * dt) - np.exp(-ka * dt))
        return c

    res = sim.simulate(ts, **TIGHT)
    np.testing.assert_allclose(res["conc"], bateman([0, 12, 24, 36, 48, 60]), rtol=1e-6, atol=1e-12)
    missed = sim.simulate(ts, scenario="missed_dose", **TIGHT)
    np.testing.assert_allclose(missed["conc"], bateman([0, 12, 36, 48, 60]), rtol=1e-6, atol=1e-12)


def test_exponential_decay_example_closed_form():
    res = load_example("exponential_decay.nimm").compile("casadi").simulate(np.linspace(0, 30, 16), **TIGHT)
    np.testing.assert_allclose(res["activity"], 3700 * np.exp(-np.log(2) * res.times / 8.0252), rtol=1e-7)


def test_static_example_over_its_data_table():
    import pandas as pd

    table = pd.read_csv(EXAMPLES / "data" / "puromycin_treated.csv")
    res = load_example("michaelis_menten.nimm").compile("casadi").simulate(inputs=table)
    conc = table["conc"].to_numpy()
    np.testing.assert_allclose(res["rate"], 200 * conc / (0.1 + conc), rtol=1e-12)


@pytest.mark.parametrize("path", sorted(p.name for p in EXAMPLES.glob("*.nimm")))
def test_every_example_simulates_under_every_scenario(path):
    model = load_example(path)
    ir = model.ir
    if ir.is_static:
        return  # covered by the table test above
    sim = model.compile("casadi")
    ts = np.linspace(0, 10, 21)
    for scenario in [None, *ir.scenarios]:
        res = sim.simulate(ts, scenario=scenario)
        expected = [s.name for s in ir.states] + [v.name for v in ir.lets] + [o.name for o in ir.observes]
        assert res.names == expected
        for name in expected:
            assert np.all(np.isfinite(res[name])), (path, scenario, name)
        # the symbolic chain used for fitting computes the same trajectory
        F = sim.trajectory_function(sim.protocol(ts, scenario=scenario))
        y, _ = F(sim.param_vector(), sim.weight_vector())
        for i, o in enumerate(ir.observes):
            np.testing.assert_allclose(np.asarray(y)[i], res[o.name], rtol=1e-6, atol=1e-9)


def test_inputs_from_a_data_frame_and_max_steps_cap():
    import pandas as pd

    x = sym("x")
    u = InputIR("u", sym("u"), (sym("u_a"), sym("u_b")), None, "step", "1")
    ir = model([S("x", 0)], [], {"x": u.coef[0] + u.coef[1] * t}, inputs=[u])
    table = pd.DataFrame({"t": [0.0, 1.0, 2.0], "u": [1.0, -1.0, np.nan], "other": [5, 5, 5]})
    res = compile_casadi(ir).simulate([0.0, 1.0, 2.0], inputs=table, **TIGHT)
    np.testing.assert_allclose(res["x"], [0.0, 1.0, 0.0], atol=1e-10)
    # a stiff decay with a tiny step budget stops with a message naming the cap, never hangs
    stiff = model([S("x", 1)], [], {"x": -1e4 * (x - sp.cos(t))})
    with pytest.raises(SimulationError, match="max_num_steps = 30"):
        compile_casadi(stiff, method="cvodes", max_num_steps=30,
                       integrator_options={"linear_multistep_method": "adams",
                                           "nonlinear_solver_iteration": "functional"}
                       ).simulate([0.0, 100.0])


def test_flu_isolation_scenario_against_scipy():
    sim = load_example("flu_sir.nimm").compile("casadi")
    ts = np.linspace(0, 14, 29)
    res = sim.simulate(ts, scenario="isolation", **TIGHT)

    def rhs(tt, y):
        s, i, r = y
        beta = 1.73 * (0.5 if tt >= 3 else 1.0)
        inf = beta * s * i / (s + i + r)
        return [-inf, inf - 0.54 * i, 0.54 * i]

    before = scipy_ref(rhs, [762.0, 1.0, 0.0], ts[ts <= 3])  # integrate across the switch in two pieces
    after = scipy_ref(rhs, before[:, -1], ts[ts >= 3])
    ref = np.hstack([before, after[:, 1:]])
    np.testing.assert_allclose(res["in_bed"], ref[1], rtol=1e-6)


# ------------------------------------------------------------------ outputs over time
def test_time_dependent_observe_is_evaluated_at_each_output_time():
    x = sym("x")
    ir = model([S("x", 1)], [P("k", 0.5)], {"x": -sym("k") * x},
               lets=[LetIR("decay", sym("decay"), sym("k") * x * t, "1")],
               observes=[O("y", x * sp.exp(t))])
    ts = np.linspace(0, 3, 13)
    res = compile_casadi(ir).simulate(ts, **TIGHT)
    np.testing.assert_allclose(res["y"], np.exp(0.5 * ts), rtol=1e-8)
    np.testing.assert_allclose(res["decay"], 0.5 * np.exp(-0.5 * ts) * ts, rtol=1e-8, atol=1e-12)
