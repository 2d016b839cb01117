"""`evaluate`: runs a model over labelled data and reports scikit-learn metrics."""

import numpy as np
import tensorflow as tf

from tfft.data.datasets import LabeledData
from tfft.evaluation.metrics import EvaluationReport, infer_task, report_from_predictions
from tfft.evaluation.signatures import predict_fn
from tfft.models.task import Task
from tfft.utils.checks import check_int


def evaluate(
    model,
    data,
    task: str | None = None,
    class_names: list | None = None,
    batch_size: int = 32,
    preprocess=None,
    threshold: float = 0.5,
) -> EvaluationReport:
    """Runs `model` over labelled `data` and returns an `EvaluationReport`.

    Args:
        model: a Keras model; a SavedModel reloaded with
            `tf.saved_model.load` whose `serving_default` signature takes the
            raw inputs and returns a dict holding `probabilities` (or a single
            output); or any callable (e.g. `keras.layers.TFSMLayer`) mapping a
            batch to scores or such a dict.
        data: a `tf.data.Dataset` of `(x, y)` batches (unbatched datasets with
            scalar labels are batched here), a tuple `(x, y)` of arrays, or a
            `tfft.data.LabeledData`.
        task: str or None. `"binary"`, `"multiclass"`, `"multilabel"` or
            `"regression"`; None guesses it from the labels and outputs.
            Defaults to None.
        class_names: list of str or None. Defaults to `data.class_names` for a
            `LabeledData`, else class ids.
        batch_size: int. Batch size for array inputs. Defaults to 32.
        preprocess: callable or None. Maps a batch of raw inputs to model
            inputs inside a `tf.data` map, e.g. a tokenizer. Defaults to None.
        threshold: float. Decision threshold for binary and multilabel
            probabilities. Defaults to 0.5.

    Returns:
        An `EvaluationReport`.

    Example:

    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    >>> x, y = np.random.rand(10, 4).astype("float32"), np.arange(10) % 3
    >>> evaluate(model, (x, y)).metrics["num_examples"]
    10
    """
    batch_size = check_int("batch_size", batch_size)
    if preprocess is not None and not callable(preprocess):
        raise TypeError(f"preprocess must be callable or None. Received: {type(preprocess)}")
    if isinstance(data, LabeledData):
        if class_names is None:
            class_names = list(data.class_names)
        data = (data.x, data.y)
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError(
                f"data as a tuple must be (x, y). Received a {type(data).__name__} "
                f"of {len(data)} items."
            )
        x, y = data
        n_x = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        if n_x != len(y):
            raise ValueError(
                f"Inputs and labels differ in length: {n_x} inputs, {len(y)} labels."
            )
        if n_x == 0:
            raise ValueError("Cannot evaluate on an empty set: data has no examples.")
        if preprocess is None and isinstance(model, Task):
            # The task's own `predict`: raw texts shortest first, in batches cut to
            # their longest (`Task.trim_batches`), scores back in the data's order.
            scores = model.predict(x, batch_size=int(batch_size), verbose=0)
            return _report(np.asarray(scores), np.asarray(y), task, class_names, threshold)
        dataset = tf.data.Dataset.from_tensor_slices((_tensorable(x), np.asarray(y)))
        dataset = dataset.batch(int(batch_size))
    elif isinstance(data, tf.data.Dataset):
        dataset = data
        spec = dataset.element_spec
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(
                "A dataset for evaluate() must yield (x, y) or (x, y, sample_weight). "
                f"Received element_spec={spec}"
            )
        if len(spec) == 3:
            dataset = dataset.map(lambda x, y, w: (x, y))
        label_spec = dataset.element_spec[1]
        if getattr(label_spec, "shape", None) is not None and label_spec.shape.rank == 0:
            dataset = dataset.batch(int(batch_size))
    else:
        raise TypeError(
            "data must be a tf.data.Dataset of (x, y) batches, a tuple (x, y) or a "
            f"tfft.data.LabeledData. Received: {type(data).__name__}"
        )
    if preprocess is not None:
        dataset = dataset.map(lambda x, y: (preprocess(x), y), num_parallel_calls=tf.data.AUTOTUNE)

    predict = predict_fn(model)
    outputs, labels = [], []
    for x_batch, y_batch in dataset:
        outputs.append(np.asarray(predict(x_batch)))
        labels.append(np.asarray(y_batch))
    if not labels:
        raise ValueError("Cannot evaluate on an empty set: the dataset yielded no batches.")
    return _report(np.concatenate(outputs, axis=0), np.concatenate(labels, axis=0), task,
                   class_names, threshold)


def _report(y_score, y_true, task, class_names, threshold):
    if task is None:
        task = infer_task(y_true, y_score)
    # Checked here so the message speaks of the model's outputs, not "predictions".
    several_outputs = y_score.ndim == 2 and y_score.shape[1] > 1
    if (task in ("multiclass", "binary") and several_outputs and class_names is not None
            and len(class_names) != y_score.shape[1]):
        raise ValueError(
            f"class_names has {len(class_names)} names but the model outputs "
            f"{y_score.shape[1]} classes. Received: class_names={list(class_names)[:20]}"
            f"{' ...' if len(class_names) > 20 else ''}"
        )
    if y_score.dtype.kind == "f" and y_score.dtype != np.float64:
        y_score = y_score.astype(np.float64)
    return report_from_predictions(y_true, y_score, task=task, class_names=class_names,
                                   threshold=threshold)


def _tensorable(x):
    if isinstance(x, dict):
        return {k: _tensorable(v) for k, v in x.items()}
    x = np.asarray(x)
    if x.dtype.kind in "OU":
        # tf.data takes text as bytes/str objects, not numpy's fixed-width unicode.
        x = x.astype(object)
    return x
