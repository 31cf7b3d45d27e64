"""Small synthetic tasks for the agent's tests, made here with scipy (seeded) so their truth is
known: a logistic growth that an exponential model misses, and a batch culture whose growth law
the data (low substrate only) cannot pin down."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.integrate import solve_ivp


def write_logistic_task(folder: Path) -> Path:
    """x' = 0.5 x (1 - x / 100), x(0) = 5, daily for 20 days, normal noise sd 1."""
    t = np.arange(0, 21.0)
    x = 100 / (1 + 19 * np.exp(-0.5 * t))
    rng = np.random.default_rng(3)
    y = x + rng.normal(0, 1.0, len(t))
    rows = "".join(f"{a:g},{b:.4f}\n" for a, b in zip(t, y))
    (folder / "train.csv").write_text("day,size\n" + rows)
    (folder / "test.csv").write_text("day,size\n25,100\n")
    (folder / "task.toml").write_text(
        '[task]\nname = "logistic"\ndescription = "A population grows in a closed habitat; `size` is '
        'measured daily (individuals)."\n[data]\ntrain = "train.csv"\ntest = "test.csv"\n')
    return folder / "task.toml"


EXPONENTIAL = """```nimm
model exponential "unlimited growth"
time day [day]
param r [1/day] = 0.3 in [0.01, 2]
param x0 [1] = 5 in [0.1, 50]
param s [1] = 2 in [0.01, 50]
state x [1] = x0 in [0, inf]
der(x) = r * x
observe size [1] = x ~ normal(sigma = s)
```"""

HYBRID = """CHANGE: the growth slows as the population grows; a neural term on the per-capita growth rate learns how.
```nimm
model exponential_hybrid "growth with a learnt density dependence"
time day [day]
param r [1/day] = 0.3 in [0.01, 2]
param x0 [1] = 5 in [0.1, 50]
param s [1] = 2 in [0.01, 50]
neural crowding(u) [1] = mlp(hidden = [4], activation = tanh, init = zero, penalty = 1e-4)
state x [1] = x0 in [0, inf]
let growth [1/day] = r * (1 + crowding(x / 100))
der(x) = growth * x
observe size [1] = x ~ normal(sigma = s)
```"""


def write_batch_culture_task(folder: Path) -> Path:
    """Monod batch culture: S' = -mu X / Y, X' = mu X, mu = 0.5 S / (2 + S) per hour; S0 = 5 g/L,
    X0 = 0.1 g/L; biomass measured hourly for 16 h (normal noise sd 0.03). Scenario `rich`: 45 g/L
    more substrate at the start, a regime the data never visit."""
    def rhs(_, y):
        s, x = y
        mu = 0.5 * s / (2 + s)
        return [-mu * x / 0.5, mu * x]

    t = np.arange(0, 17.0)
    sol = solve_ivp(rhs, (0, 16), [5.0, 0.1], t_eval=t, rtol=1e-10, atol=1e-12)
    rng = np.random.default_rng(7)
    y = sol.y[1] + rng.normal(0, 0.03, len(t))
    (folder / "train.csv").write_text("hour,biomass\n" + "".join(f"{a:g},{b:.5f}\n" for a, b in zip(t, y)))
    (folder / "truth.csv").write_text("hour,biomass\n0,0.1\n")
    (folder / "task.toml").write_text(
        '[task]\nname = "batch"\ndescription = "A batch culture; `biomass` in g/L, hourly."\n'
        '[data]\ntrain = "train.csv"\n'
        '[[counterfactual]]\nscenario = "rich"\ndescription = "45 g/L more substrate at the start"\n'
        'truth = "truth.csv"\n')
    return folder / "task.toml"


MONOD = """```nimm
model batch_monod "Monod growth in a batch culture"
time hour [h]
param mumax [1/h] = 0.4 in [0.05, 2]
param Ks [g/L] = 1 in [0.01, 20]
param X0 [g/L] = 0.1 in [0.01, 1]
const S0 [g/L] = 5
const Y [1] = 0.5
param s [g/L] = 0.05 in [0.001, 1]
state S [g/L] = S0 in [0, inf]
state X [g/L] = X0 in [0, inf]
let mu [1/h] = mumax * S / (Ks + S)
der(S) = -mu * X / Y
der(X) = mu * X
observe biomass [g/L] = X ~ normal(sigma = s)
scenario rich "45 g/L more substrate at the start"
  dose feed: S += 45 at 0
end
```"""
