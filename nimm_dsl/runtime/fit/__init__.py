"""Fitting params (and neural weights) to data (LANGUAGE.md §7 and §9, docs/language.md §7).

One module per concern:

* `loss.py` — the negative log-likelihood of each noise model, written once for numpy, CasADi
  and Torch; predictions and RMSE.
* `result.py` — FitResult, FIT.json (`save`, `load_fit`; schema in docs/fit-json.md) and the text
  report (`format_report`).
* `starts.py` — start points (the defaults, then a Latin hypercube inside the bounds), standard
  errors and the labels "at its lower/upper bound", "not determined by the data".
* `multistart.py` — the one multi-start loop every path runs through: failing starts, rescue
  starts inside the bounds, the best start.
* `failures.py` — solver output kept off the terminal; a failing start diagnosed at the point
  where it failed (the first non-finite quantity and time, and a fix).
* `casadi_paths.py` — IPOPT single shooting, and the least-squares path with CVODES sensitivities.
* `torch_path.py` — Adam then L-BFGS for hybrid models, with a convergence check.
* `entry.py` — `fit`, `nll` and `information_matrix` (the curvature the standard errors invert).
* `profile.py` — profile likelihood: the loss along one param, the others refitted.
"""
from .entry import HESSIANS as HESSIANS
from .entry import PATHS as PATHS
from .entry import fit as fit
from .entry import information_matrix as information_matrix
from .entry import nll as nll
from .failures import native_output_captured as native_output_captured
from .loss import NUMPY_OPS as NUMPY_OPS
from .loss import LossOps as LossOps
from .loss import array_walk_ops as array_walk_ops
from .loss import casadi_loss_ops as casadi_loss_ops
from .loss import dataset_nll as dataset_nll
from .loss import observation_nll as observation_nll
from .loss import torch_loss_ops as torch_loss_ops
from .profile import profile as profile
from .result import FORMAT_VERSION as FORMAT_VERSION
from .result import FitResult as FitResult
from .result import StartRecord as StartRecord
from .result import format_report as format_report
from .result import load_fit as load_fit
from .result import params_for_model as params_for_model
from .starts import start_points as start_points
