"""Synthetic recovery: data simulated from known params with noise and hidden states, then fitted."""
import numpy as np
import pandas as pd
import pytest

import nimm_dsl

SEIR = """
model seir_synthetic "SEIR; only the infectious are counted, with Poisson noise"
time t [day]
unit person
const N [person] = 100000
param beta  [1/day]  = 0.5 in [0.05, 3]
const kappa [1/day]  = 0.25               "1 / incubation period, known from clinical data"
param gamma [1/day]  = 0.3 in [0.02, 2]
param E0    [person] = 5   in [0.1, 100]
state S [person] = N - E0 in [0, inf]
state E [person] = E0     in [0, inf]
state I [person] = 0      in [0, inf]
state R [person] = 0      in [0, inf]
flow S -> E = beta * S * I / N
flow E -> I = kappa * E
flow I -> R = gamma * I
observe infectious [person] = I ~ poisson
"""
TRUTH = {"beta": 0.6, "gamma": 0.2, "E0": 10.0}


@pytest.mark.slow
def test_seir_recovers_transmission_recovery_and_hidden_initial_exposed_from_infectious_counts():
    model = nimm_dsl.load_source(SEIR)
    times = np.arange(0.0, 81.0, 1.0)
    clean = model.compile("casadi").simulate(times, params=TRUTH)["infectious"]
    rng = np.random.default_rng(7)
    data = pd.DataFrame({"t": times, "infectious": rng.poisson(clean).astype(float)})
    # With both periods free, SEIR seen through I alone has two near-equal optima (incubation
    # and infectious periods trade places); as in practice, the incubation period is known.
    fit = model.fit(data, progress=False)
    for name, true in TRUTH.items():
        assert fit.params[name] == pytest.approx(true, rel=0.03), name
        # the reported standard errors are honest: the truth lies within 4 of them
        assert abs(fit.params[name] - true) < 4 * fit.stderr[name], name
    # the fit is at least as good as the truth under the model's own likelihood
    from nimm_dsl.runtime.fit import nll

    assert fit.loss <= nll(model.ir, data, TRUTH) + 1e-6
