"""Torch back end: values against closed forms / scipy / the CasADi back end, events, batching,
gradients, failures. Hand-built IRs keep most tests independent of the front end."""
import glob
import math
import re

import numpy as np
import pytest
import sympy as sp
import torch
from scipy.integrate import solve_ivp

import nimm_dsl
from nimm_dsl.backends.neural import torch_mlp
from nimm_dsl.backends.torch_backend import NEURAL_KEY, compile_torch
from nimm_dsl.compiler.ir import (DoseIR, InputIR, LetIR, ModelIR, NeuralIR, ObserveIR, ParamIR,
                                  ScenarioIR, SetIR, StateIR)
from nimm_dsl.errors import SimulationError
from nimm_dsl.backends.protocol import build_protocol

INF = math.inf


def _param(name, default, lo=-INF, hi=INF, estimate=True):
    return ParamIR(name, sp.Symbol(name), default, lo, hi, "1", estimate)


def sir_ir():
    """SIR with a let, a baseline dose, and a scenario halving beta from t = 3."""
    t, (S, I, R) = sp.Symbol("t"), sp.symbols("S I R")
    beta, gamma, N, I0 = sp.symbols("beta gamma N I0")
    flag, infection = sp.Symbol("flag_0"), sp.Symbol("infection")
    ir = ModelIR("sir", None, t, "t", "day")
    ir.params = [_param("beta", 1.5), _param("gamma", 0.5), _param("I0", 1.0), _param("N", 763.0, estimate=False)]
    ir.states = [StateIR("S", S, N - I0, 0, INF, "person"), StateIR("I", I, I0, 0, INF, "person"),
                 StateIR("R", R, sp.Integer(0), 0, INF, "person")]
    effective_beta = sp.Piecewise((sp.Rational(1, 2) * beta, flag > 0.5), (beta, True))
    ir.lets = [LetIR("infection", infection, effective_beta * S * I / N, "person/day")]
    ir.derivatives = {"S": -infection, "I": infection - gamma * I, "R": gamma * I}
    ir.observes = [ObserveIR("in_bed", sp.Symbol("in_bed"), 2 * I, "person", "normal", sp.Integer(10))]
    ir.sets = [SetIR("beta", flag, beta / 2, 3.0, None, "isolation")]
    ir.scenarios = {"isolation": ScenarioIR("isolation", None, [], [])}
    ir.doses = [DoseIR("seed", "I", "+", 2 * I0, [4.0])]
    return ir


def sir_scipy(times, beta=1.5, gamma=0.5, I0=1.0, N=763.0, isolation=False):
    """The same model written by hand, integrated with scipy piece by piece."""
    def rhs(t, y, b):
        S, I, R = y
        return [-b * S * I / N, b * S * I / N - gamma * I, gamma * I]

    y = np.array([N - I0, I0, 0.0])
    edges = [0.0, 3.0, 4.0, times[-1]]
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        if a == 4.0:
            y[1] += 2 * I0
        eff = beta / 2 if (isolation and a >= 3.0) else beta
        inside = [t for t in times if a <= t < b or (b == edges[-1] and t == b)]
        sol = solve_ivp(rhs, (a, b), y, args=(eff,), t_eval=inside, rtol=1e-11, atol=1e-11, method="DOP853")
        out.append(sol.y)
        y = solve_ivp(rhs, (a, b), y, args=(eff,), rtol=1e-11, atol=1e-11, method="DOP853").y[:, -1]
    return np.concatenate(out, axis=1)


def lv_neural_ir(activation="tanh", init="random", penalty=1e-3):
    t, (H, L) = sp.Symbol("year"), sp.symbols("H L")
    a, b, c, d, K, H0, L0 = sp.symbols("a b c d K H0 L0")
    resid = sp.Function("resid")
    ir = ModelIR("lvn", None, t, "year", "year")
    ir.params = [_param(n, v, 0, 100) for n, v in
                 [("a", .55), ("b", .028), ("c", .8), ("d", .024), ("H0", 30.), ("L0", 4.)]]
    ir.params.append(_param("K", 50.0, estimate=False))
    ir.states = [StateIR("H", H, H0, 0, INF, "kpelt"), StateIR("L", L, L0, 0, INF, "kpelt")]
    ir.neurals = [NeuralIR("resid", resid, 2, [6, 5], activation, init, penalty, "1/year")]
    ir.derivatives = {"H": a * H - b * H * L + resid(H / K, L / K) * H, "L": -c * L + d * H * L}
    ir.observes = [ObserveIR("hare", sp.Symbol("hare"), H, "kpelt", "lognormal", sp.Float(0.25))]
    return ir


def one_state_ir(rhs, init=1.0, lo=-INF, hi=INF, inputs=(), doses=(), params=()):
    """der(X) = rhs(X, t, *param symbols, *input symbols) for small closed-form tests."""
    t, X = sp.Symbol("t"), sp.Symbol("X")
    ir = ModelIR("one", None, t, "t", "s")
    ir.params = [_param(n, v) for n, v in params]
    ir.inputs = list(inputs)
    ir.states = [StateIR("X", X, sp.Float(init), lo, hi, "1")]
    u_exprs = [u.coef[0] + u.coef[1] * t for u in ir.inputs]
    ir.derivatives = {"X": rhs(X, t, *[p.symbol for p in ir.params], *u_exprs)}
    ir.doses = list(doses)
    return ir


# ------------------------------------------------------------------------- values
@pytest.mark.parametrize("scenario", [None, "isolation"])
def test_sir_matches_scipy_with_dose_and_set_window(scenario):
    times = np.array([0.0, 1.0, 2.5, 3.0, 3.5, 4.0, 5.0, 7.5, 10.0])
    res = compile_torch(sir_ir()).simulate(times, scenario=scenario, rtol=1e-10, atol=1e-10)
    ref = sir_scipy(times, isolation=scenario == "isolation")
    for i, name in enumerate("SIR"):
        np.testing.assert_allclose(res[name], ref[i], rtol=1e-7, atol=1e-7)
    np.testing.assert_allclose(res["in_bed"], 2 * ref[1], rtol=1e-7)
    np.testing.assert_allclose(res["infection"], 1.5 / (2 if scenario else 1) ** (times >= 3)
                               * ref[0] * ref[1] / 763, rtol=1e-7)
    assert res.times.tolist() == times.tolist() and res.warnings == []
    assert res.to_frame().columns.tolist() == ["t", "S", "I", "R", "infection", "in_bed"]


def test_dose_value_reported_after_the_dose_and_multiplicative_doses():
    k = sp.Symbol("k")
    doses = [DoseIR("bolus", "X", "+", 2 * k, [1.0, 2.0]), DoseIR("kill", "X", "*", sp.Float(0.5), [3.0])]
    ir = one_state_ir(lambda X, t, k: -k * X, doses=doses, params=[("k", 0.7)])
    times = np.array([0.0, 0.5, 1.0, 2.0, 2.5, 3.0, 4.0])
    x = compile_torch(ir).simulate(times, rtol=1e-11, atol=1e-12)["X"]
    e = np.exp(-0.7)
    x1 = e + 1.4  # value right after the dose at t = 1
    x2 = x1 * e + 1.4
    x3 = 0.5 * x2 * e
    expected = [1.0, np.exp(-0.35), x1, x2, x2 * np.exp(-0.35), x3, x3 * e]
    np.testing.assert_allclose(x, expected, rtol=1e-9)


def test_linear_and_step_inputs_follow_the_data():
    u_lin = InputIR("u", sp.Symbol("u"), (sp.Symbol("u_a"), sp.Symbol("u_b")), None, "linear", "1")
    ir = one_state_ir(lambda X, t, u: u, init=0.0, inputs=[u_lin])
    times = np.array([0.0, 1.0, 2.0, 3.0])
    # u: 0 -> 2 linearly on [0, 1], 2 -> 0 on [1, 2], then held at 0
    x = compile_torch(ir).simulate(times, inputs={"u": ([0.0, 1.0, 2.0], [0.0, 2.0, 0.0])})["X"]
    np.testing.assert_allclose(x, [0.0, 1.0, 2.0, 2.0], atol=1e-9)
    u_step = InputIR("u", sp.Symbol("u"), (sp.Symbol("u_a"), sp.Symbol("u_b")), 5.0, "step", "1")
    step = compile_torch(one_state_ir(lambda X, t, u: u, init=0.0, inputs=[u_step]))
    np.testing.assert_allclose(step.simulate(times, inputs={"u": ([0.0, 1.5], [1.0, 3.0])})["X"],
                               [0.0, 1.0, 3.0, 6.0], atol=1e-9)  # 1 until 1.5, then 3
    np.testing.assert_allclose(step.simulate(times)["X"], 5.0 * times, atol=1e-9)  # the default


@pytest.mark.slow
def test_rk4_fixed_step_agrees_with_dopri5():
    ir = lv_neural_ir()
    times = np.linspace(0, 10, 21)
    adaptive = compile_torch(ir).simulate(times, rtol=1e-10, atol=1e-10)
    fixed = compile_torch(ir, method="rk4", step_size=0.01).simulate(times)
    np.testing.assert_allclose(fixed["H"], adaptive["H"], rtol=1e-6)


# ------------------------------------------------------------------------- neural terms
def test_zero_init_neural_model_equals_its_mechanistic_part():
    times = np.linspace(0, 8, 17)
    hybrid = compile_torch(lv_neural_ir(init="zero")).simulate(times)
    ir = lv_neural_ir()
    H, L = ir.states[0].symbol, ir.states[1].symbol
    a, b = sp.symbols("a b")
    ir.derivatives["H"] = a * H - b * H * L
    ir.neurals = []
    mech = compile_torch(ir).simulate(times)
    np.testing.assert_allclose(hybrid["H"], mech["H"], rtol=1e-12)


def test_neural_outputs_and_penalty_along_the_trajectory():
    ir = lv_neural_ir(penalty=0.01)
    sim = compile_torch(ir)
    times = np.linspace(0, 5, 11)
    w = torch.tensor(np.random.default_rng(2).normal(size=ir.neurals[0].n_weights))
    traj = sim.trajectory(build_protocol(ir, times), torch.tensor([[p.default for p in ir.params]]),
                          {"resid": w})
    out = traj[NEURAL_KEY.format("resid")]
    assert out.shape == (1, 11, 1)
    expected = torch_mlp(ir.neurals[0], [traj["H"] / 50.0, traj["L"] / 50.0], w)
    torch.testing.assert_close(out[..., 0], expected)
    torch.testing.assert_close(sim.neural_penalty(traj), 0.01 * (expected ** 2).mean(1))


# ------------------------------------------------------------------------- batching
@pytest.mark.slow
def test_batched_params_and_weights_equal_single_solves():
    ir = lv_neural_ir()
    sim = compile_torch(ir)
    times = np.linspace(0, 6, 13)
    rng = np.random.default_rng(5)
    a = np.array([0.45, 0.55, 0.65])
    W = rng.normal(scale=0.5, size=(3, ir.neurals[0].n_weights))
    batch = sim.simulate(times, params={"a": a, "c": 0.9}, weights={"resid": W}, rtol=1e-10, atol=1e-10)
    assert batch["H"].shape == (3, 13) and batch["hare"].dtype == np.float64
    for i in range(3):
        one = sim.simulate(times, params={"a": a[i], "c": 0.9}, weights={"resid": W[i]}, rtol=1e-10, atol=1e-10)
        assert one["H"].shape == (13,)
        for name in ("H", "L", "hare"):
            np.testing.assert_allclose(batch[name][i], one[name], rtol=1e-8)
    # shared weights with batched params
    shared = sim.simulate(times, params={"a": a}, weights={"resid": W[1]}, rtol=1e-10, atol=1e-10)
    one = sim.simulate(times, params={"a": a[2]}, weights={"resid": W[1]}, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(shared["L"][2], one["L"], rtol=1e-8)


# ------------------------------------------------------------------------- gradients
def _loss_fn(sim, protocol, names):
    def loss(P, w):
        traj = sim.trajectory(protocol, P, {"resid": w}, rtol=1e-10, atol=1e-10)
        return sum((traj[n] ** 2).mean() for n in names) + sim.neural_penalty(traj).sum()
    return loss


@pytest.mark.slow
@pytest.mark.parametrize("method,tol", [("rk4", 1e-6), ("dopri5", 1e-4)])
def test_gradients_match_central_differences(method, tol):
    ir = lv_neural_ir(activation="softplus", penalty=0.1)
    sim = compile_torch(ir, method=method, step_size=0.02)
    protocol = build_protocol(ir, np.linspace(0, 3, 7))
    loss = _loss_fn(sim, protocol, ["H", "L"])
    P = torch.tensor([[p.default for p in ir.params]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor(np.random.default_rng(7).normal(scale=0.3, size=ir.neurals[0].n_weights), requires_grad=True)
    loss(P, w).backward()
    h = 1e-5
    with torch.no_grad():
        for j in [0, 1, 4]:  # a, b, H0
            e = torch.zeros_like(P)
            e[0, j] = h * P[0, j]
            fd = (loss(P + e, w) - loss(P - e, w)) / (2 * e[0, j])
            assert float(P.grad[0, j]) == pytest.approx(float(fd), rel=tol, abs=1e-8)
        for k in [0, 7, len(w) - 1]:
            e = torch.zeros_like(w)
            e[k] = h
            fd = (loss(P, w + e) - loss(P, w - e)) / (2 * h)
            assert float(w.grad[k]) == pytest.approx(float(fd), rel=tol, abs=1e-8)


def test_adjoint_gradients_equal_direct_backprop():
    ir = lv_neural_ir()
    protocol = build_protocol(ir, np.linspace(0, 2, 5))
    grads = []
    for adjoint in (False, True):
        sim = compile_torch(ir, adjoint=adjoint)
        P = torch.tensor([[p.default for p in ir.params]], requires_grad=True)
        w = torch.tensor(ir.neurals[0].initial_weights(), requires_grad=True)
        _loss_fn(sim, protocol, ["H"])(P, w).backward()
        grads.append(torch.cat([P.grad.ravel(), w.grad]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------- failures
def test_blow_up_raises_simulation_error_naming_time_and_state():
    sim = compile_torch(one_state_ir(lambda X, t: X ** 2))  # X = 1 / (1 - t): infinite at t = 1
    with pytest.raises(SimulationError) as err:
        sim.simulate(np.linspace(0, 2, 5))
    msg = str(err.value)
    assert "states involved: X" in msg and re.search(r"at t = (1|0\.99\d*) ", msg)


def test_nan_and_step_cap_raise_simulation_errors():
    nan_sim = compile_torch(one_state_ir(lambda X, t: sp.sqrt(X - 2 * t), init=1.0))
    with pytest.raises(SimulationError, match="states involved: X"):
        nan_sim.simulate(np.linspace(0, 2, 5))
    capped = compile_torch(lv_neural_ir(), max_num_steps=5)
    with pytest.raises(SimulationError, match="max_num_steps"):
        capped.simulate(np.linspace(0, 50, 5))
    rk_nan = compile_torch(one_state_ir(lambda X, t: sp.sqrt(X - 2 * t)), method="rk4", step_size=0.01)
    with pytest.raises(SimulationError, match="non-finite.*X"):
        rk_nan.simulate(np.linspace(0, 2, 5))


def test_domain_warning_names_state_and_first_time():
    sim = compile_torch(one_state_ir(lambda X, t: sp.Integer(-1), init=1.0, lo=0.0, hi=INF))
    res = sim.simulate(np.array([0.0, 0.5, 1.5, 2.0]))
    assert len(res.warnings) == 1 and "X" in res.warnings[0] and "t = 1.5" in res.warnings[0]


def test_bad_arguments_are_value_errors():
    sim = compile_torch(sir_ir())
    with pytest.raises(ValueError, match="gama"):
        sim.simulate([0, 1], params={"gama": 1.0})
    with pytest.raises(ValueError, match="isolaton"):
        sim.simulate([0, 1], scenario="isolaton")
    with pytest.raises(ValueError, match="unknown neural"):
        sim.simulate([0, 1], weights={"nope": np.zeros(3)})
    with pytest.raises(ValueError, match="unknown ODE method"):
        compile_torch(sir_ir(), method="leapfrog")


def test_device_option():
    ir = sir_ir()
    if torch.cuda.is_available():
        gpu = compile_torch(ir, device="cuda").simulate([0, 1, 2])
        np.testing.assert_allclose(gpu["I"], compile_torch(ir).simulate([0, 1, 2])["I"], rtol=1e-7)
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            compile_torch(ir, device="cuda")


# ------------------------------------------------------------------------- the examples
EXAMPLES = sorted(glob.glob("examples/*.nimm"))


def _close_to_casadi(a, b, names):
    for name in names:
        scale = np.max(np.abs(b[name])) + 1e-300
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-7 * scale, err_msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES)
def test_every_example_matches_casadi(path):
    model = nimm_dsl.load(path)
    ir = model.ir
    torch_sim, casadi_sim = model.compile("torch"), model.compile("casadi")
    rng = np.random.default_rng(0)
    weights = {n.name: rng.normal(scale=0.3, size=n.n_weights) for n in ir.neurals}
    if ir.is_static:
        rows = {u.name: np.linspace(0.5, 20, 7) for u in ir.inputs}
        a, b = torch_sim.simulate(inputs=rows, weights=weights), casadi_sim.simulate(inputs=rows, weights=weights)
        _close_to_casadi(a, b, a.names)
        return
    times = np.linspace(0, 12, 25)
    for scenario in [None, *ir.scenarios]:
        a = torch_sim.simulate(times, scenario=scenario, weights=weights, rtol=1e-10, atol=1e-10)
        b = casadi_sim.simulate(times, scenario=scenario, weights=weights, rtol=1e-10, atol=1e-10)
        assert a.names == b.names
        _close_to_casadi(a, b, a.names)
