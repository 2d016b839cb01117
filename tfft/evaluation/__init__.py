"""Evaluation: scikit-learn metrics reports and plots."""

from tfft.evaluation.plots import (
    plot_confusion_matrix,
    plot_per_class_f1,
    plot_predicted_vs_true,
    plot_training_curves,
)
from tfft.evaluation.report import (
    TASKS,
    EvaluationReport,
    evaluate,
    infer_task,
    report_from_predictions,
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
