"""Evaluation: scikit-learn metrics reports, `evaluate`, plots and interpretation.

- `tfft.evaluation.metrics`: `EvaluationReport`, `report_from_predictions`, `infer_task`.
- `tfft.evaluation.evaluator`: `evaluate` (a model over labelled data).
- `tfft.evaluation.signatures`: Keras models, callables and SavedModel signatures as
  `batch -> scores`.
- `tfft.evaluation.plots`: figures of reports and training runs.
- `tfft.evaluation.explain`: `explain` (integrated gradients, Grad-CAM, occlusion).
- `tfft.evaluation.failures`: `top_losses`, `most_confused`.
- `tfft.evaluation.calibration`: `calibration_report` (reliability diagram, ECE).
- `tfft.evaluation.slices`: `slice_metrics` (metrics per group, largest gap).
"""

from tfft.evaluation.calibration import (
    CalibrationReport,
    calibration_report,
    plot_reliability_diagram,
)
from tfft.evaluation.evaluator import evaluate
from tfft.evaluation.explain import (
    Explanation,
    explain,
    load_keras_source,
    plot_image_attributions,
    plot_text_attributions,
)
from tfft.evaluation.failures import most_confused, top_losses
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
from tfft.evaluation.slices import (
    SliceReport,
    image_brightness_groups,
    plot_slices,
    slice_metrics,
    text_length_groups,
)

__all__ = [
    "TASKS",
    "CalibrationReport",
    "EvaluationReport",
    "Explanation",
    "SliceReport",
    "calibration_report",
    "evaluate",
    "explain",
    "image_brightness_groups",
    "infer_task",
    "load_keras_source",
    "most_confused",
    "plot_confusion_matrix",
    "plot_image_attributions",
    "plot_per_class_f1",
    "plot_predicted_vs_true",
    "plot_reliability_diagram",
    "plot_slices",
    "plot_text_attributions",
    "plot_training_curves",
    "report_from_predictions",
    "slice_metrics",
    "text_length_groups",
    "top_losses",
]
