"""Results never depend on a cache: an empty, a populated and an unusable cache directory (and an
unusable home) give the same output, and nothing the package does unpickles anything."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKEN = """model broken
time t [day]
param k [1/day] = 0.5 in [0, 1]
state x [1] = 1 in [0, inf]
der(x) = -k * y
observe obs [1] = x ~ normal(sigma = 0.1)
"""


def run_check(files, env_changes):
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME")}
    env.update(env_changes)
    command = [sys.executable, "-m", "nimm_dsl.cli", "check", "--format", "json", *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_check_output_is_the_same_whatever_the_cache(tmp_path):
    model = tmp_path / "broken.nimm"
    model.write_text(BROKEN)
    files = [ROOT / "examples" / "flu_sir.nimm", ROOT / "examples" / "exponential_decay.nimm", model]
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    not_a_directory = tmp_path / "a-file"
    not_a_directory.write_text("")
    home = tmp_path / "home"
    home.mkdir()
    runs = {
        "empty cache": run_check(files, {"XDG_CACHE_HOME": str(empty), "HOME": str(home)}),
        "populated cache": run_check(files, {"XDG_CACHE_HOME": str(empty), "HOME": str(home)}),
        "cache is a file": run_check(files, {"XDG_CACHE_HOME": str(not_a_directory), "HOME": str(home)}),
        "no usable home": run_check(files, {"HOME": str(not_a_directory / "nowhere")}),
    }
    code, out, err = runs["empty cache"]
    assert code == 1 and err == ""
    found = [(d["code"], d["line"]) for d in json.loads(out)]
    assert ("E201", 5) in found  # the checker really ran: `y` is undefined
    for name, result in runs.items():
        assert result == runs["empty cache"], name


PROBE = r"""
import os, sys
# Third-party modules are imported first: some unpickle their own objects in memory while they
# import (dask, which pint imports when it is installed); what is checked is what checking,
# fitting and simulating do, and that nothing is read from a file.
import casadi, numpy, pandas, pint, scipy.optimize, sympy, torch
cache_home = os.environ["XDG_CACHE_HOME"]
opened, unpickled = [], []
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = args[0].decode() if isinstance(args[0], bytes) else args[0]
        # the compiled route's objects are the one cache read, after its owner/mode/hash checks
        # (tests/test_compiled.py); a result never depends on it
        compiled = os.path.join(cache_home, "nimm_dsl", "compiled", "")
        if path.startswith(compiled) and path.endswith((".so", ".sha256")):
            return
        if path.endswith((".pickle", ".pkl", ".cache")) or path.startswith(cache_home):
            opened.append(path)
    elif event == "pickle.find_class":
        unpickled.append(args)
sys.addaudithook(hook)
import numpy as np
import nimm_dsl
from nimm_dsl.cli import main
root = sys.argv[1]
for example in ("flu_sir", "exponential_decay", "michaelis_menten"):
    nimm_dsl.check(open(root + f"/examples/{example}.nimm").read())
nimm_dsl.check("model m\nparam p [mmHg] = 1 in [0, 2]\nobserve y [mmHg] = p\n")  # builds pint's registry
assert "pint" in sys.modules
model = nimm_dsl.load(root + "/examples/flu_sir.nimm")
for backend in ("casadi", "torch"):
    model.compile(backend).simulate(np.linspace(0, 5, 6))
model.fit(root + "/examples/data/influenza_england_1978_school.csv")
print("OPENED", opened)
print("UNPICKLED", unpickled)
"""


@pytest.mark.slow
def test_checking_fitting_and_simulating_read_no_pickle_and_no_cache(tmp_path):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OPENED []" in done.stdout, done.stdout
    assert "UNPICKLED []" in done.stdout, done.stdout
