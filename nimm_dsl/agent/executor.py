"""Where candidates are fitted: local worker processes, or a Dask distributed cluster.

Either way each candidate is scored in a child process of its own (`python -m
nimm_dsl.agent.score`, a JSON payload on standard input, a JSON result as the last line of its
output) with a hard wall-clock timeout: the child is killed at its deadline, which Dask cannot do
to a running task. The payload and the result are plain JSON — text and numbers — so nothing
from a language model is ever unpickled or executed.

`map` returns results in the order of its payloads whatever order they finish in, so a search
that decides only at generation barriers is reproducible on any executor.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

from .score import RESULT_MARKER

DEFAULT_TIMEOUT = 300.0


def score_in_child(payload_text: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Score one candidate in a fresh Python process; the result as JSON text. Runs on a Dask
    worker too (a subprocess, not multiprocessing: Dask's worker processes are daemonic)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    try:
        done = subprocess.run([sys.executable, "-m", "nimm_dsl.agent.score"], input=payload_text,
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return json.dumps({"status": "timeout",
                           "error": f"the fit did not finish within {timeout:g} s; it was stopped"})
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return line[len(RESULT_MARKER):]
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return json.dumps({"status": "fit_failed",
                       "error": f"the scoring process ended with code {done.returncode}"
                                + (f": {' / '.join(tail)}" if tail else "")})


class LocalExecutor:
    """`workers` candidates at a time, each in its own child process."""

    def __init__(self, workers: int = 2, timeout: float = DEFAULT_TIMEOUT):
        self.workers, self.timeout = max(1, workers), timeout

    def map(self, payloads: Sequence[dict]) -> list[dict]:
        texts = [json.dumps(p) for p in payloads]
        with ThreadPoolExecutor(self.workers) as pool:
            results = list(pool.map(lambda text: score_in_child(text, self.timeout), texts))
        return [json.loads(r) for r in results]

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"{self.workers} local worker process(es)"


class DaskExecutor:
    """Candidates as tasks on a Dask distributed cluster (`tcp://HOST:8786`, or a Client/
    LocalCluster given by the caller); each task scores its candidate in a child process."""

    def __init__(self, address=None, timeout: float = DEFAULT_TIMEOUT, client=None):
        from dask.distributed import Client

        self.timeout = timeout
        self._owns_client = client is None
        self.client = client if client is not None else Client(address, timeout="30s")

    def map(self, payloads: Sequence[dict]) -> list[dict]:
        texts = [json.dumps(p) for p in payloads]
        # pure=False: two equal payloads are still two fits (a retry must not be served from memory)
        futures = self.client.map(score_in_child, texts, timeout=self.timeout, pure=False)
        return [json.loads(r) for r in self.client.gather(futures)]

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def describe(self) -> str:
        return f"Dask cluster at {self.client.scheduler.address}"


def make_executor(workers: int = 2, cluster: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT):
    return DaskExecutor(cluster, timeout) if cluster else LocalExecutor(workers, timeout)
