"""The tasks an evaluation report knows, shared by the metrics and the plots."""

TASKS = ("binary", "multiclass", "multilabel", "regression")
CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel")
AVERAGES = ("macro", "micro", "weighted")
