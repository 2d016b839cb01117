"""Evaluation: scikit-learn metrics reports, `evaluate` and plots.

- `tfft.evaluation.metrics`: `EvaluationReport`, `report_from_predictions`, `infer_task`.
- `tfft.evaluation.evaluator`: `evaluate` (a model over labelled data).
- `tfft.evaluation.signatures`: Keras models, callables and SavedModel signatures as
  `batch -> scores`.
- `tfft.evaluation.plots`: figures of reports and training runs.
"""

from tfft.evaluation.evaluator import evaluate
from tfft.evaluation.metrics import (
    TASKS,
    EvaluationReport,
    infer_task,
    report_from_predictions,
)
from tfft.evaluation.plots import (
    plot_confusion_matrix,
    plot_per_class_f1,
    plot_predicted_vs_true,
    plot_training_curves,
)

__all__ = [
    "TASKS",
    "EvaluationReport",
    "evaluate",
    "infer_task",
    "plot_confusion_matrix",
    "plot_per_class_f1",
    "plot_predicted_vs_true",
    "plot_training_curves",
    "report_from_predictions",
]
