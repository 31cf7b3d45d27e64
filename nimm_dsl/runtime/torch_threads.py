"""How many CPU threads torch should use for this process's small float64 kernels.

The library never changes torch's global state; the `nimm` command calls `use_best_torch_threads`
before a Torch fit or simulation. Torch defaults to one thread per core, which is slow for the
tiny matrices of a neural ODE (tens of weights, batches of tens of points) and much slower still
on a busy machine (benchmarks/torch_threads.py). The choice is measured, not assumed: a kernel
shaped like a neural right-hand side with its gradient, timed at each candidate thread count,
interleaved. `NIMM_TORCH_THREADS=N` skips the measurement and uses N; library users call
`torch.set_num_threads(N)` themselves.
"""
from __future__ import annotations

import os
import statistics
import time

ENV = "NIMM_TORCH_THREADS"


def _seconds_per_step(torch, steps: int = 20, budget: float = 0.05) -> float:
    """A small MLP (8 -> 16 -> 16 -> 2, tanh) over 64 points, forward and backward, float64:
    seconds per step, over `steps` steps or as many as fit in `budget` seconds."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, dtype=torch.float64, generator=g)
    ws = [torch.randn(a, b, dtype=torch.float64, generator=g, requires_grad=True)
          for a, b in ((8, 16), (16, 16), (16, 2))]
    t = time.perf_counter()
    for k in range(1, steps + 1):
        h = x
        for w in ws[:-1]:
            h = torch.tanh(h @ w)
        (h @ ws[-1]).pow(2).sum().backward()
        if time.perf_counter() - t > budget:
            break
    return (time.perf_counter() - t) / k


def best_torch_threads(candidates=None, rounds: int = 3) -> int:
    """The thread count among `candidates` (default: 1, 2 and torch's default) with the fastest
    median kernel time; torch's own setting is restored afterwards. A count twice as slow as the
    best in the first round is not timed again (on a busy machine that can be 10x slower)."""
    import torch

    default = torch.get_num_threads()
    candidates = sorted(set(candidates or (1, min(2, default), default)))
    times = {n: [] for n in candidates}
    try:
        for k in range(rounds):
            if k == 1:
                fastest = min(times[n][0] for n in candidates)
                candidates = [n for n in candidates if times[n][0] <= 2 * fastest]
            for n in candidates:
                torch.set_num_threads(n)
                times[n].append(_seconds_per_step(torch))
    finally:
        torch.set_num_threads(default)
    return min(candidates, key=lambda n: (statistics.median(times[n]), n))


def use_best_torch_threads() -> int:
    """Set torch's thread count for this process: NIMM_TORCH_THREADS when set (a positive
    integer), else the measured best. Returns the count used. For the command line only."""
    import torch

    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{ENV} must be a positive integer, got {value!r}")
    else:
        n = best_torch_threads()
    torch.set_num_threads(n)
    return n
