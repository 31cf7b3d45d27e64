"""The event protocol: segment boundaries, dose placement, set flags, input coefficients."""
import numpy as np
import pytest
import sympy as sp

from nimm_dsl.compiler.ir import DoseIR, InputIR, ModelIR, ParamIR, ScenarioIR, SetIR, StateIR
from nimm_dsl.errors import SimulationError
from nimm_dsl.backends.protocol import build_protocol, param_vector, runtime_vector

t, x, k = sp.symbols("t x k")


def make_ir(doses=(), sets=(), inputs=(), scenarios=None):
    return ModelIR(
        "m", None, t, "t", "day",
        states=[StateIR("x", x, sp.Integer(1), 0, np.inf, "mg")],
        params=[ParamIR("k", k, 0.5, 0, 10, "1/day", True)],
        inputs=list(inputs), derivatives={"x": -k * x}, doses=list(doses), sets=list(sets),
        scenarios=scenarios or {})


def bounds(p):
    return [(s.t0, s.t1) for s in p.segments]


def test_segments_cut_at_doses_and_set_edges_and_outputs_reported_once():
    dose = DoseIR("d", "x", "+", sp.Integer(1), [1.0, 2.0, 10.0])  # 10 is after the end
    window = SetIR("k", sp.Symbol("f0"), 2 * k, 1.5, 2.5, None)
    p = build_protocol(make_ir([dose], [window]), np.linspace(0, 3, 7))
    assert bounds(p) == [(0, 1), (1, 1.5), (1.5, 2), (2, 2.5), (2.5, 3)]
    assert [len(s.doses) for s in p.segments] == [0, 1, 0, 1, 0]
    assert [s.flags[0] for s in p.segments] == [0, 0, 1, 1, 0]
    # every output exactly once; an output at a dose time belongs to the segment starting there
    idx = np.concatenate([s.out_idx for s in p.segments])
    assert list(idx) == list(range(7))
    assert list(p.segments[1].out_idx) == [2]  # t = 1.0, after the dose at 1
    assert list(p.segments[-1].out_idx) == [5, 6]  # 2.5 and the closed end 3.0


def test_dose_at_start_and_end_and_before_start():
    dose = DoseIR("d", "x", "*", sp.Float(0.5), [-1.0, 0.0, 3.0])
    p = build_protocol(make_ir([dose]), [0.0, 1.0, 3.0])
    assert bounds(p) == [(0, 3), (3, 3)]  # zero-length last segment carries the dose at t_end
    assert [e.time for e in p.segments[0].doses] == [0.0]
    assert [e.time for e in p.segments[1].doses] == [3.0]
    assert list(p.segments[1].out_idx) == [2]
    assert list(p.segments[0].out_idx) == [0, 1]


def test_scenario_replaces_and_removes_doses_and_adds_sets():
    base = DoseIR("d", "x", "+", sp.Integer(1), [1.0])
    other = DoseIR("e", "x", "+", sp.Integer(2), [2.0])
    replaced = DoseIR("d", "x", "+", sp.Integer(5), [1.5])
    scen_set = SetIR("k", sp.Symbol("f0"), 0 * k, 1.0, None, "stop")
    scenarios = {"stop": ScenarioIR("stop", None, [replaced], ["e"]),
                 "none": ScenarioIR("none", None, [], ["d", "e"])}
    ir = make_ir([base, other], [scen_set], scenarios=scenarios)
    times = np.linspace(0, 4, 5)
    base_p = build_protocol(ir, times)
    assert [e.time for s in base_p.segments for e in s.doses] == [1.0, 2.0]
    assert all(s.flags[0] == 0 for s in base_p.segments)  # a scenario set is off at baseline
    stop = build_protocol(ir, times, scenario="stop")
    assert [(e.time, e.dose.amount) for s in stop.segments for e in s.doses] == [(1.5, 5)]
    assert [s.flags[0] for s in stop.segments] == [0, 1, 1]  # bounds 0, 1, 1.5, 4
    assert [e for s in build_protocol(ir, times, scenario="none").segments for e in s.doses] == []


def test_step_and_linear_input_coefficients():
    u_step = InputIR("u", sp.Symbol("u"), (sp.Symbol("ua"), sp.Symbol("ub")), None, "step", "1")
    u_lin = InputIR("v", sp.Symbol("v"), (sp.Symbol("va"), sp.Symbol("vb")), 7.0, "linear", "1")
    ir = make_ir(inputs=[u_step, u_lin])
    data = {"u": ([1.0, 2.0, np.nan], [10.0, 20.0, 30.0]), "v": ([1.0, 3.0], [0.0, 4.0])}
    p = build_protocol(ir, np.linspace(0, 4, 9), inputs=data)
    assert bounds(p) == [(0, 1), (1, 2), (2, 3), (3, 4)]

    def value(i, seg, tt):
        a, b = seg.input_coef[i]
        return a + b * tt

    seg0, seg1, seg2, seg3 = p.segments
    assert value(0, seg0, 0.5) == 10.0  # step: first value held before the data start
    assert value(0, seg1, 1.7) == 10.0 and value(0, seg2, 2.5) == 20.0  # NaN time row dropped
    assert value(1, seg0, 0.5) == 0.0  # linear: held before the first point
    assert value(1, seg1, 2.0) == pytest.approx(2.0) and value(1, seg2, 2.5) == pytest.approx(3.0)
    assert value(1, seg3, 3.9) == 4.0  # held after the last point
    # without data the default applies; without a default it is an error naming the input
    p = build_protocol(ir, [0.0, 1.0], inputs={"u": 3.0})
    assert list(p.segments[0].input_coef[1]) == [7.0, 0.0]
    with pytest.raises(SimulationError, match="`u`"):
        build_protocol(ir, [0.0, 1.0])


def test_runtime_vector_order_and_bad_names():
    window = SetIR("k", sp.Symbol("f0"), 2 * k, None, 1.0, None)
    ir = make_ir(sets=[window])
    p = build_protocol(ir, [0.0, 2.0])
    assert list(runtime_vector(ir, {"k": 3.0}, p.segments[0])) == [3.0, 1.0]
    assert list(runtime_vector(ir, None, p.segments[1])) == [0.5, 0.0]
    with pytest.raises(ValueError, match="`kk`.*did you mean `k`"):
        param_vector(ir, {"kk": 1.0})
    with pytest.raises(ValueError, match="unknown scenario `nope`"):
        build_protocol(ir, [0.0, 1.0], scenario="nope")
    with pytest.raises(ValueError, match="sorted"):
        build_protocol(ir, [1.0, 0.0])


def test_t_start_before_first_output_and_single_time():
    dose = DoseIR("d", "x", "+", sp.Integer(1), [0.5])
    p = build_protocol(make_ir([dose]), [2.0, 3.0], t_start=0.0)
    assert bounds(p) == [(0, 0.5), (0.5, 3)]
    assert list(p.segments[0].out_idx) == [] and list(p.segments[1].out_idx) == [0, 1]
    p = build_protocol(make_ir(), [2.0])
    assert bounds(p) == [(2.0, 2.0)] and list(p.segments[0].out_idx) == [0]
