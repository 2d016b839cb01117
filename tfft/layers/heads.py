"""Task heads: the layer that goes on top of the pooled backbone features."""

import keras

TASKS = ("binary", "multiclass", "multilabel", "regression", "token_classification")


@keras.saving.register_keras_serializable(package="tfft")
class TaskHead(keras.layers.Layer):
    """A task layer: optional hidden layer, dropout, and the output layer.

    Args:
        task: str. One of `TASKS`.
        num_classes: int. Classes (outputs for regression). Binary uses one
            sigmoid unit.
        dropout: float. Dropout rate before the output layer. Defaults to 0.1.
        hidden_units: int. Width of an optional hidden layer. Defaults to None.
        hidden_activation: str. Its activation. Defaults to `"gelu"`.

    Outputs are float32 even under a mixed-precision policy, so losses and
    probabilities stay numerically safe.
    """

    def __init__(self, task="multiclass", num_classes=2, dropout=0.1, hidden_units=None,
                 hidden_activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if task not in TASKS:
            raise ValueError(
                f"Unknown task. Expected one of {list(TASKS)}. Received: task={task!r}"
            )
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(
                f"num_classes must be a positive int. Received: num_classes={num_classes!r}"
            )
        if task in ("multiclass", "token_classification") and num_classes < 2:
            raise ValueError(
                f"task={task!r} needs num_classes >= 2. Received: num_classes={num_classes}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
        self.task = task
        self.num_classes = num_classes
        self.dropout = dropout
        self.hidden_units = hidden_units
        self.hidden_activation = hidden_activation
        self.hidden = (
            keras.layers.Dense(hidden_units, activation=hidden_activation, name="hidden")
            if hidden_units else None
        )
        self.drop = keras.layers.Dropout(dropout)
        units = 1 if task == "binary" else num_classes
        activation = {
            "binary": "sigmoid", "multiclass": "softmax", "multilabel": "sigmoid",
            "regression": None, "token_classification": "softmax",
        }[task]
        self.output_layer = keras.layers.Dense(
            units, activation=activation, dtype="float32", name="logits"
        )

    @property
    def output_units(self):
        return 1 if self.task == "binary" else self.num_classes

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.hidden is not None:
            self.hidden.build(shape)
            shape = (*shape[:-1], self.hidden_units)
        self.output_layer.build(shape)
        self.built = True

    def call(self, inputs, training=None):
        x = inputs
        if self.hidden is not None:
            x = self.hidden(x)
        x = self.drop(x, training=training)
        return self.output_layer(x)

    def compute_output_shape(self, input_shape):
        return (*tuple(input_shape[:-1]), self.output_units)

    def get_config(self):
        return {
            **super().get_config(),
            "task": self.task,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "hidden_units": self.hidden_units,
            "hidden_activation": self.hidden_activation,
        }
