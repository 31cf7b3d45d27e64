"""Tasks (data + what a model is for) and how any model is scored on one (docs/tasks.md)."""
from .evaluate import EvaluationReport, evaluate
from .task import Counterfactual, Task, TaskError, load_task

__all__ = ["Counterfactual", "EvaluationReport", "Task", "TaskError", "evaluate", "load_task"]
