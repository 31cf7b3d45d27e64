"""Batched Torch simulation vs loops of single solves (Torch and CasADi).

For SIR (examples/flu_sir.nimm) and the hybrid Lotka-Volterra model
(examples/lotka_volterra_neural.nimm, random non-zero network weights): 1024 parameter sets
(beta/gamma or a/c spread by +-20 %) x 200 output times, float64, rtol = atol = 1e-8.
Loops are timed on a subset of solves and extrapolated to 1024 (the table says so).
Also timed: one forward + backward pass of a batched trajectory loss (for fitting).

    .venv/bin/python benchmarks/batch_speed.py [--device cuda] [--repeats 3] [--loop-subset 16]
        [--threads 1]

Torch runs on one CPU thread by default: CasADi is single-threaded too, and on a busy machine
torch's intra-op threads make small float64 kernels (a 1024 x 8 tanh) a hundred times slower.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nimm_dsl  # noqa: E402
from nimm_dsl.backends.protocol import build_protocol  # noqa: E402

BATCH, N_TIMES = 1024, 200
CASES = [("SIR", "examples/flu_sir.nimm", ("beta", "gamma"), 14.0),
         ("hybrid Lotka-Volterra", "examples/lotka_volterra_neural.nimm", ("a", "c"), 20.0)]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def param_sets(ir, names, rng) -> dict[str, np.ndarray]:
    return {n: ir.param(n).default * rng.uniform(0.8, 1.2, BATCH) for n in names}


def bench_case(label, path, names, t_end, device, repeats, subset):
    model = nimm_dsl.load(ROOT / path)
    ir = model.ir
    rng = np.random.default_rng(0)
    params = param_sets(ir, names, rng)
    weights = {n.name: rng.normal(scale=0.3, size=n.n_weights) for n in ir.neurals}
    times = np.linspace(0.0, t_end, N_TIMES)
    sim = model.compile("torch", device=device)
    rows = []

    batched = median_time(lambda: sim.simulate(times, params=params, weights=weights), repeats)
    rows.append((f"batched Torch ({device}), 1 call", batched))

    def one(i):
        return {n: v[i] for n, v in params.items()}

    if device == "cpu":
        cpu_loop = median_time(lambda: [sim.simulate(times, params=one(i), weights=weights)
                                        for i in range(subset)], max(1, repeats // 2)) * BATCH / subset
        rows.append((f"loop of single Torch solves ({subset} timed, x{BATCH // subset})", cpu_loop))
        casadi = model.compile("casadi")
        casadi.simulate(times, params=one(0), weights=weights)  # integrator set-up once, as in a fit
        ca_loop = median_time(lambda: [casadi.simulate(times, params=one(i), weights=weights)
                                       for i in range(subset)], max(1, repeats // 2)) * BATCH / subset
        rows.append((f"loop of CasADi/CVODES solves ({subset} timed, x{BATCH // subset})", ca_loop))

    # one forward + backward pass of a batched loss, as the fitter runs it
    protocol = build_protocol(ir, times)
    P0 = sim.param_matrix(params)[0]
    W0 = {k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in weights.items()}

    def forward_backward():
        P = torch.tensor(P0, dtype=torch.float64, device=device, requires_grad=True)
        W = {k: v.clone().requires_grad_(True) for k, v in W0.items()}
        traj = sim.trajectory(protocol, P, W)
        loss = sum((traj[o.name] ** 2).mean() for o in ir.observes) + sim.neural_penalty(traj).sum()
        loss.backward()

    rows.append((f"batched forward + backward ({device})", median_time(forward_backward, repeats)))
    loop = next((t for name, t in rows if name.startswith("loop of single Torch")), None)
    return [(label, name, t, (loop / t if loop else None)) for name, t in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-subset", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"]
    if args.device == "cuda":
        if torch.cuda.is_available():
            devices.append("cuda")
        else:
            print("CUDA is not available: CPU rows only", file=sys.stderr)
    print(f"{BATCH} parameter sets x {N_TIMES} output times, float64, rtol = atol = 1e-8, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; median of {args.repeats}\n")
    print("| model | run | time for 1024 sets [s] | speed-up vs loop of single Torch solves |")
    print("|---|---|---|---|")
    for label, path, names, t_end in CASES:
        for device in devices:
            for model, run, t, speedup in bench_case(label, path, names, t_end, device,
                                                     args.repeats, args.loop_subset):
                if device != "cpu" and run.startswith("loop"):
                    continue
                s = f"{speedup:.1f}x" if speedup is not None else "-"
                print(f"| {model} | {run} | {t:.3f} | {s} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
