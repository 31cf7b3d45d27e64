"""Torch's thread count: chosen by measurement in the `nimm` command, never changed by the library
(issue #15, target 6)."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from nimm_dsl.runtime import torch_threads

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_best_thread_count_is_the_fastest_measured_and_torch_is_left_as_it_was(monkeypatch):
    before = torch.get_num_threads()
    seconds = {1: 3.0, 2: 1.0, 4: 2.0}  # per thread count, as if measured
    timed = []

    def fake(t, **_):
        n = t.get_num_threads()
        timed.append(n)
        return seconds[n]

    monkeypatch.setattr(torch_threads, "_seconds_per_step", fake)
    assert torch_threads.best_torch_threads([1, 2, 4]) == 2
    assert torch.get_num_threads() == before
    # after the first round a count over twice the best (1: 3x) is not timed again
    assert timed.count(1) == 1 and timed.count(2) == 3 and timed.count(4) == 3


def _run(code, env_extra, *args):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_library_leaves_torch_threads_alone_and_the_cli_sets_them():
    sim = ("import sys, torch, nimm_dsl; torch.set_num_threads(3); "
           "m = nimm_dsl.load(sys.argv[1]); m.simulate([0, 1, 2], backend='torch'); "
           "print('threads', torch.get_num_threads())")
    out = _run(sim, {}, str(EXAMPLES / "flu_sir.nimm"))
    assert out.stdout.split()[-2:] == ["threads", "3"], out.stderr
    cli = ("import sys, torch; torch.set_num_threads(3); from nimm_dsl.cli import main; "
           "rc = main(['simulate', sys.argv[1], '--backend', 'torch', '--times', '0:2:3']); "
           "print('threads', rc, torch.get_num_threads())")
    out = _run(cli, {"NIMM_TORCH_THREADS": "1"}, str(EXAMPLES / "flu_sir.nimm"))
    assert out.stdout.split()[-3:] == ["threads", "0", "1"], out.stderr
    out = _run(cli, {"NIMM_TORCH_THREADS": "many"}, str(EXAMPLES / "flu_sir.nimm"))
    assert out.stdout.split()[-3:] == ["threads", "1", "3"]
    assert "NIMM_TORCH_THREADS must be a positive integer, got 'many'" in out.stderr
