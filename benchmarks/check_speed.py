"""Parse+check speed of the front end, and the cost of a cold `nimm check` process.

Run from the repository root:  .venv/bin/python benchmarks/check_speed.py
Prints a markdown table (medians over repeats). Targets (issue #2): <= 5 ms for a 30-line model,
<= 50 ms for a 300-line model in-process, <= 0.4 s for a cold `nimm check`; neither
`import nimm_dsl` nor `nimm check` may load torch or casadi.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def chain_model(n_states: int) -> str:
    """A linear compartment chain with lets and observes: about 3 lines per state."""
    lines = ["model chain \"a generated transit-compartment chain\"", "time t [h]",
             "param k [1/h] = 0.5 in [0.01, 10]", "param V [L] = 10 in [1, 100]"]
    for i in range(n_states):
        init = "100" if i == 0 else "0"
        lines.append(f"state A{i} [mg] = {init} in [0, inf]")
    for i in range(n_states - 1):
        lines.append(f"flow A{i} -> A{i + 1} = k * A{i}")
    lines.append(f"flow A{n_states - 1} -> = k * A{n_states - 1}")
    for i in range(n_states):
        lines.append(f"observe C{i} [mg/L] = A{i} / V ~ normal(sigma = 0.1)")
    return "\n".join(lines) + "\n"


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    import nimm_dsl

    small, large = chain_model(9), chain_model(99)
    n_small, n_large = len(small.splitlines()), len(large.splitlines())
    assert not [d for d in nimm_dsl.check(small) if d.is_error], nimm_dsl.check(small)[:3]
    assert not [d for d in nimm_dsl.check(large) if d.is_error]
    from nimm_dsl.grammar import parser

    def first_check(src):
        nimm_dsl.check(src)

    t_small = median_time(lambda: first_check(small), 51)
    t_large = median_time(lambda: first_check(large), 21)
    t_large_warm = median_time(lambda: nimm_dsl.check(large), 21)

    nimm = Path(sys.executable).with_name("nimm")
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "chain.nimm"
        f.write_text(small)
        cmd = [str(nimm), "check", str(f)] if nimm.exists() else [sys.executable, "-m", "nimm_dsl.cli", "check", str(f)]
        subprocess.run(cmd, capture_output=True)  # warm the OS file cache (and pint's cache)
        t_cold = median_time(lambda: subprocess.run(cmd, capture_output=True, check=True), 7)
    probe = ("import sys, nimm_dsl; from nimm_dsl.cli import main; "
             "main(['check', 'examples/flu_sir.nimm']) if __import__('os').path.exists('examples/flu_sir.nimm') else None; "
             "print(','.join(m for m in ('torch', 'casadi', 'sympy') if m in sys.modules) or 'none')")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[-1]

    rows = [
        (f"parse+check, {n_small}-line model (in-process)", t_small * 1e3, "ms", 5),
        (f"parse+check, {n_large}-line model (in-process)", t_large * 1e3, "ms", 50),
        (f"re-check of the {n_large}-line model (statement cache warm)", t_large_warm * 1e3, "ms", 50),
        ("cold `nimm check` process, 30-line model", t_cold, "s", 0.4),
    ]
    print("| measurement | median | target | met |")
    print("|---|---|---|---|")
    for name, value, unit, target in rows:
        print(f"| {name} | {value:.3g} {unit} | <= {target} {unit} | {'yes' if value <= target else 'NO'} |")
    print(f"| heavy modules loaded by `import nimm_dsl` + `nimm check` | {heavy} | none of torch, casadi | "
          f"{'yes' if not ({'torch', 'casadi'} & set(heavy.split(','))) else 'NO'} |")


if __name__ == "__main__":
    main()
