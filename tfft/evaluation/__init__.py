"""Evaluation: scikit-learn metrics reports, plots and training callbacks."""

from tfft.evaluation.callbacks import MonitorCheck, default_callbacks
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
    "MonitorCheck",
    "default_callbacks",
    "evaluate",
    "infer_task",
    "plot_confusion_matrix",
    "plot_per_class_f1",
    "plot_predicted_vs_true",
    "plot_training_curves",
    "report_from_predictions",
]
