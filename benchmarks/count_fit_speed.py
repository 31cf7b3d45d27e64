"""Count likelihoods through the least-squares machinery (issue #15, target 2: >= 3x faster than
scipy L-BFGS-B + LSODA on the same NLL from the same start, NLL within 1e-6 relative).

The boarding-school SIR (examples/flu_sir.nimm) with the bed counts under Poisson noise instead
of normal: our fit (least squares on Poisson deviance residuals with CVODES sensitivities), the
same model through IPOPT with exact Hessians (the previous path, `ipopt_options={}`), and a
hand-written scipy fit: `minimize(method="L-BFGS-B")` (finite-difference gradients, params scaled
by their start) of the Poisson
NLL, the ODE solved by `solve_ivp(method="LSODA")` on a hand-written right-hand side, from the
same start and within the same bounds. Every solver at rtol = atol = 1e-8. Our times are whole
`fit` calls (data binding and standard errors included), on a simulator compiled once, as the
agent does. Medians of interleaved runs.

Negative binomial (issue #15 target 2, issue #13): the same SIR with the bed counts
`~ negbinomial(dispersion = k)`, (a) k a const (20): the means on the negative binomial's
deviance residuals against scipy L-BFGS-B + LSODA on the same NLL; (b) k a param, estimated by
the Cox–Reid adjusted profile likelihood (our default): our alternation (means by least squares
at fixed k, k by the adjusted profile) against the same alternation written with scipy
(L-BFGS-B for the means at fixed k, a bounded Brent search for k on the adjusted profile with J
by central differences of LSODA runs), from the same start, to the same tolerance on k (1e-6).

Run: .venv/bin/python benchmarks/count_fit_speed.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp
from scipy.optimize import minimize
from scipy.special import gammaln

import nimm_dsl

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "influenza_england_1978_school.csv"
N = 763.0


def poisson_sir() -> str:
    text = (ROOT / "examples" / "flu_sir.nimm").read_text()
    text = text.replace("~ normal(sigma = sigma)", "~ poisson")
    return "\n".join(line for line in text.splitlines() if not line.startswith("param sigma"))


def scipy_fit(table: pd.DataFrame, start, bounds):
    t, y = table["day"].to_numpy(float), table["in_bed"].to_numpy(float)
    const = float(np.sum(gammaln(y + 1)))

    def nll(theta):
        beta, gamma, I0 = theta
        sol = solve_ivp(lambda _, u: [-beta * u[0] * u[1] / N, beta * u[0] * u[1] / N - gamma * u[1]],
                        (t[0], t[-1]), [N - I0, I0], method="LSODA", t_eval=t, rtol=1e-8, atol=1e-8)
        f = sol.y[1]
        if not sol.success or np.any(f <= 0):
            return 1e10
        return float(np.sum(f - y * np.log(f))) + const

    # in params scaled by their start, as our fit does; the state starts at the first data time
    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: nll(z * scale), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 20000})
    return res.fun


def negbin_sir(k: str) -> str:
    """flu_sir with negative binomial bed counts; k: "const k [1] = 20" or "param k [1] = 10 in [0.1, 1000]"."""
    text = (ROOT / "examples" / "flu_sir.nimm").read_text()
    text = text.replace("~ normal(sigma = sigma)", "~ negbinomial(dispersion = k)")
    return "\n".join(k if line.startswith("param sigma") else line for line in text.splitlines())


def _sir_means(theta, t):
    beta, gamma, I0 = theta
    sol = solve_ivp(lambda _, u: [-beta * u[0] * u[1] / N, beta * u[0] * u[1] / N - gamma * u[1]],
                    (t[0], t[-1]), [N - I0, I0], method="LSODA", t_eval=t, rtol=1e-8, atol=1e-8)
    return sol.y[1] if sol.success else None


def _negbin_nll(y, f, k):
    if f is None or np.any(f <= 0):
        return 1e10
    return float(-np.sum(gammaln(y + k) - gammaln(k) - gammaln(y + 1) + k * np.log(k / (k + f))
                         + y * np.log(f / (k + f))))


def _scipy_means(t, y, k, start, bounds):
    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: _negbin_nll(y, _sir_means(z * scale, t), k), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 20000})
    return res.x * scale, res.fun


def scipy_negbin_fixed_fit(table: pd.DataFrame, start, bounds):
    t, y = table["day"].to_numpy(float), table["in_bed"].to_numpy(float)
    return _scipy_means(t, y, 20.0, start, bounds)[1]


def scipy_negbin_adjusted_fit(table: pd.DataFrame, start, bounds):
    """Means by L-BFGS-B at fixed k, then k maximising the Cox–Reid adjusted profile with the
    means held, until k moves less than 1e-6 (relative); k starts at its default, 10."""
    from scipy.optimize import minimize_scalar

    t, y = table["day"].to_numpy(float), table["in_bed"].to_numpy(float)
    mean_start, mean_bounds, k = start[:3], bounds[:3], 10.0
    theta = np.asarray(mean_start, dtype=float)
    for _ in range(20):
        theta, _ = _scipy_means(t, y, k, theta, mean_bounds)
        f = _sir_means(theta, t)
        J = np.stack([(_sir_means(theta + h * e, t) - _sir_means(theta - h * e, t)) / (2 * h)
                      for e, h in ((np.eye(3)[j], 1e-4 * abs(theta[j])) for j in range(3))], 1)

        def minus_apl(log_k):
            kk = np.exp(log_k)
            W = 1.0 / (f + f ** 2 / kk)
            return _negbin_nll(y, f, kk) + 0.5 * np.linalg.slogdet(J.T @ (W[:, None] * J))[1]

        new = float(np.exp(minimize_scalar(minus_apl, bounds=(np.log(0.1), np.log(1000)), method="bounded",
                                           options={"xatol": 1e-10}).x))
        done, k = abs(new - k) <= 1e-6 * k, new
        if done:
            break
    return _negbin_nll(y, _sir_means(theta, t), k)


PK = """model pk_doses
time t [h]
param ka [1/h] = 1 in [0.05, 10]
param ke [1/h] = 0.2 in [0.01, 5]
param amt [mg] = 80 in [1, 1000]
state Ag [mg] = 0
state C [mg] = 0
der(Ag) = -ka * Ag
der(C) = ka * Ag - ke * C
dose D: Ag += amt at 0 every 12 times 3
set ke = 2 * ke from 30 to 33
observe y [mg] = C ~ poisson
"""


def scipy_pk_fit(table: pd.DataFrame, start, bounds):
    """The same NLL by hand: LSODA between the dose and window boundaries, jumps applied."""
    t, y = table["t"].to_numpy(float), table["y"].to_numpy(float)
    const = float(np.sum(gammaln(y + 1)))
    edges = [0.0, 12.0, 24.0, 30.0, 33.0, t[-1]]

    def nll(theta):
        ka, ke, amt = theta
        u, f = np.array([0.0, 0.0]), np.empty_like(t)
        for a, b in zip(edges[:-1], edges[1:]):
            if a in (0.0, 12.0, 24.0):
                u = u + [amt, 0.0]
            k = 2 * ke if a == 30.0 else ke
            at = (t >= a) & ((t < b) | (b == edges[-1]))
            sol = solve_ivp(lambda _, v: [-ka * v[0], ka * v[0] - k * v[1]], (a, b), u, method="LSODA",
                            t_eval=np.r_[t[at], b] if t[at].size == 0 or t[at][-1] < b else t[at],
                            rtol=1e-8, atol=1e-8)
            f[at] = sol.y[1][:at.sum()]
            u = sol.y[:, -1]
        pos = y > 0  # a zero count adds just the rate (C is 0 before the first dose is absorbed)
        if np.any(f < 0) or np.any(f[pos] <= 0):
            return 1e10
        return float(np.sum(f) - np.sum(y[pos] * np.log(f[pos]))) + const

    scale = np.asarray(start, dtype=float)
    res = minimize(lambda z: nll(z * scale), np.ones_like(scale), method="L-BFGS-B",
                   bounds=[(lo / s, hi / s) for (lo, hi), s in zip(bounds, scale)],
                   options={"ftol": 1e-15, "gtol": 1e-10, "eps": 1e-7, "maxfun": 20000})
    return res.fun


def pk_table(model) -> pd.DataFrame:
    times = np.linspace(0.5, 36, 24)
    f = np.asarray(model.simulate(np.r_[0.0, times], params={"ka": 0.7, "ke": 0.15, "amt": 120.0})["y"])
    rng = np.random.default_rng(4)
    return pd.DataFrame({"t": np.r_[0.0, times], "y": np.r_[0.0, rng.poisson(f[1:]).astype(float)]})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sir = nimm_dsl.load_source(poisson_sir(), "flu_sir_poisson.nimm")
    pk = nimm_dsl.load_source(PK, "pk_doses.nimm")
    cases = [("SIR (flu_sir), Poisson bed counts, 14 points", sir, pd.read_csv(DATA), scipy_fit),
             ("oral PK, 3 doses (amount estimated), a `set` window, Poisson, 25 points", pk, pk_table(pk),
              scipy_pk_fit),
             ("SIR (flu_sir), negative binomial bed counts, k = 20 fixed, 14 points",
              nimm_dsl.load_source(negbin_sir("const k [1] = 20"), "flu_sir_negbin.nimm"), pd.read_csv(DATA),
              scipy_negbin_fixed_fit),
             ("SIR (flu_sir), negative binomial bed counts, k estimated (Cox–Reid), 14 points",
              nimm_dsl.load_source(negbin_sir("param k [1] = 10 in [0.1, 1000]"), "flu_sir_negbin_k.nimm"),
              pd.read_csv(DATA), scipy_negbin_adjusted_fit)]
    loads = []
    print(f"rtol = atol = 1e-8 everywhere, median of {args.repeats} interleaved runs\n")
    print("| model | fit | time (s) | final NLL | NLL vs scipy (relative) | scipy time / this |")
    print("|---|---|---:|---:|---:|---:|")
    labels = {"ours": "nimm_dsl: least squares on deviance residuals + CVODES sensitivities",
              "ipopt": "nimm_dsl: IPOPT, exact Hessians (the previous path)",
              "scipy": "scipy L-BFGS-B + LSODA (hand-written)"}
    adjusted_labels = {"ours": "nimm_dsl: least squares at fixed k + the adjusted-profile k step",
                       "scipy": "scipy: L-BFGS-B + LSODA at fixed k + the same k step (hand-written)"}
    for title, model, table, peer in cases:
        sim = model.compile("casadi")
        est = [p for p in model.ir.params if p.estimate]
        start = [p.default for p in est]
        bounds = [(p.lo, p.hi) for p in est]
        adjusted = any(p.name == "k" for p in est)
        # with k estimated IPOPT would fit plain maximum likelihood (not the same estimate): no row
        runs = {"ours": [], "scipy": []} if adjusted else {"ours": [], "ipopt": [], "scipy": []}
        losses = {}
        model.fit(table, simulator=sim, progress=False)  # warm-up: first-call set-up of CasADi
        for _ in range(args.repeats):
            for name in runs:
                t = time.perf_counter()
                if name == "ours":
                    losses[name] = model.fit(table, simulator=sim, progress=False).loss
                elif name == "ipopt":
                    losses[name] = model.fit(table, simulator=sim, progress=False, ipopt_options={}).loss
                else:
                    losses[name] = peer(table, start, bounds)
                runs[name].append(time.perf_counter() - t)
            loads.append(os.getloadavg()[0])
        med = {k: statistics.median(v) for k, v in runs.items()}
        for k in runs:
            rel = (losses[k] - losses["scipy"]) / abs(losses["scipy"])
            print(f"| {title} | {(adjusted_labels if adjusted else labels)[k]} | {med[k]:.3f} | {losses[k]:.8f} | {rel:+.1e} | "
                  f"{med['scipy'] / med[k]:.1f}x |", flush=True)
    print(f"\nload average {min(loads):.1f}-{max(loads):.1f} (2 cores)")


if __name__ == "__main__":
    main()
