"""Parse+check speed of the front end, and the cost of a cold `nimm check` of every shipped example.

Run from the repository root:  .venv/bin/python benchmarks/check_speed.py
Prints a markdown table (medians over repeats). Targets (issues #2 and #8): <= 5 ms for a 31-line
model and <= 60 ms for a 301-line model in-process (parser tables already built); <= 0.5 s for a
cold `nimm check` process of every file in examples/ and of the generated 31-line model; neither
`import nimm_dsl` nor `nimm check` may load torch, casadi or sympy. The "pint" column says whether
checking that file imported pint (it costs ~0.6 s to import and build a registry).
"""
from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLD_TARGET = 0.5  # seconds
COLD_REPEATS = 7
HEAVY = ("torch", "casadi", "sympy")


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


def check_command(path: Path) -> list[str]:
    nimm = Path(sys.executable).with_name("nimm")
    if nimm.exists():
        return [str(nimm), "check", str(path)]
    return [sys.executable, "-m", "nimm_dsl.cli", "check", str(path)]


def cold_checks(files: list[Path], env: dict) -> dict[Path, tuple[float, float]]:
    """Median (wall, CPU) seconds of a fresh `nimm check FILE` process per file. The rounds
    interleave the files, so a burst of load on a shared machine spreads over all of them; the
    CPU time (user + system) of the process is the steadier number when the machine is busy."""
    samples: dict[Path, list[tuple[float, float]]] = {f: [] for f in files}
    for f in files:  # warm the OS file cache
        subprocess.run(check_command(f), capture_output=True, env=env)
    for _ in range(COLD_REPEATS):
        for f in files:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            done = subprocess.run(check_command(f), capture_output=True, env=env)
            wall = time.perf_counter() - t0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            samples[f].append((wall, cpu))
            if done.returncode != 0:
                raise SystemExit(f"`nimm check {f}` failed:\n{done.stdout.decode()}{done.stderr.decode()}")
    return {f: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s))
            for f, s in samples.items()}


PROBE = """
import sys
import nimm_dsl
from nimm_dsl.cli import main
try:
    main(['check', sys.argv[1]])
except SystemExit:
    pass
print(','.join(m for m in ('torch', 'casadi', 'sympy', 'pint') if m in sys.modules) or 'none')
"""


def loaded_modules(path: Path, env: dict) -> set[str]:
    """The heavy modules (and pint) that `import nimm_dsl` + `nimm check FILE` import."""
    done = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True,
                          cwd=ROOT, env=env)
    last = done.stdout.strip().splitlines()[-1]
    return set() if last == "none" else set(last.split(","))


def main() -> None:
    import nimm_dsl

    small, large = chain_model(9), chain_model(99)
    n_small, n_large = len(small.splitlines()), len(large.splitlines())
    assert not [d for d in nimm_dsl.check(small) if d.is_error], nimm_dsl.check(small)[:3]
    assert not [d for d in nimm_dsl.check(large) if d.is_error]
    t_small = median_time(lambda: nimm_dsl.check(small), 51)
    t_large = median_time(lambda: nimm_dsl.check(large), 21)

    print("| measurement | median | target | met |")
    print("|---|---|---|---|")
    for name, value, target in (
            (f"parse+check, {n_small}-line model (in-process)", t_small * 1e3, 5),
            (f"parse+check, {n_large}-line model (in-process)", t_large * 1e3, 60)):
        print(f"| {name} | {value:.3g} ms | <= {target} ms | {'yes' if value <= target else 'NO'} |")

    with tempfile.TemporaryDirectory() as tmp:
        generated = Path(tmp) / f"chain_{n_small}_lines.nimm"
        generated.write_text(small)
        env = dict(os.environ, XDG_CACHE_HOME=str(Path(tmp) / "cache"))  # an empty cache, as on a fresh machine
        files = sorted((ROOT / "examples").glob("*.nimm")) + [generated]
        cold = cold_checks(files, env)
        modules = {f: loaded_modules(f, env) for f in files}
        lines = {f: len(f.read_text().splitlines()) for f in files}

    print()
    print(f"Cold `nimm check FILE` process, median of {COLD_REPEATS} (target <= {COLD_TARGET} s each; "
          f"none of {', '.join(HEAVY)} loaded)")
    print()
    print("| file | lines | cold check (wall) | CPU time | met | pint loaded | heavy modules |")
    print("|---|---:|---:|---:|---|---|---|")
    for f in files:
        name = f"examples/{f.name}" if f.parent.name == "examples" else f"generated {f.name}"
        heavy = sorted(modules[f] & set(HEAVY))
        wall, cpu = cold[f]
        met = wall <= COLD_TARGET and not heavy
        print(f"| {name} | {lines[f]} | {wall:.3f} s | {cpu:.3f} s | {'yes' if met else 'NO'} | "
              f"{'yes' if 'pint' in modules[f] else 'no'} | {', '.join(heavy) or 'none'} |")
    worst = max(wall for wall, _ in cold.values())
    clean = worst <= COLD_TARGET and not any(modules[f] & set(HEAVY) for f in files)
    print(f"\nslowest: {worst:.3f} s; every file within target: {'yes' if clean else 'NO'}")


if __name__ == "__main__":
    main()
