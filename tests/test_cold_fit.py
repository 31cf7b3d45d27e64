"""A cold `nimm fit` loads only what the fit uses (issue #15, target 5): no pandas (the CSV reader
is the standard library's), no torch, no matplotlib without --plot, no pint, no scipy.stats with
one start."""
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_cold_fit_loads_no_pandas_torch_matplotlib_or_pint(tmp_path):
    code = ("import sys; from nimm_dsl.cli import main; rc = main(sys.argv[1:]); "
            "print('loaded:', rc, *[m for m in ('pandas', 'torch', 'matplotlib', 'pint', 'scipy.stats') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, "fit", str(EXAMPLES / "flu_sir.nimm"),
                          str(EXAMPLES / "data" / "influenza_england_1978_school.csv")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "beta" in out.stdout  # the fit ran and reported
    assert out.stdout.strip().splitlines()[-1] == "loaded: 0"


def test_cold_check_loads_no_back_end_and_no_package_metadata(tmp_path):
    # `--version` alone needs importlib.metadata; `nimm check` must not load a back end
    code = ("import sys; from nimm_dsl.cli import main; rc = main(sys.argv[1:]); "
            "print('loaded:', rc, *[m for m in ('torch', 'casadi', 'importlib.metadata') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, "check", str(EXAMPLES / "flu_sir.nimm")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "loaded: 0"
