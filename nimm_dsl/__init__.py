"""nimm_dsl: a typed equation language for mechanistic and hybrid dynamical models."""
from .api import Model, check, load, load_source
from .errors import DataError, FitError, ModelError, NimmError, SimulationError

__all__ = ["Model", "check", "load", "load_source", "ModelError", "DataError", "FitError",
           "SimulationError", "NimmError"]
__version__ = "0.1.0"
