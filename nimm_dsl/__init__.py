"""nimm_dsl: a typed equation language for mechanistic and hybrid dynamical models."""
from .api import Model, check, load, load_source
from .errors import DataError, FitError, ModelError, NimmError, SimulationError



def evaluate(task, model, **options):
    """Score `model` (a .nimm path or a Model) on `task` (a TOML path or a Task): check, fit,
    forecast and counterfactuals; returns an EvaluationReport (docs/tasks.md)."""
    from .tasks import evaluate as run

    return run(task, model, **options)


__all__ = ["Model", "check", "evaluate", "load", "load_source", "ModelError", "DataError", "FitError",
           "SimulationError", "NimmError"]
__version__ = "0.1.0"
