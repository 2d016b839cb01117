"""Tracing each Keras step function once: training and predicting.

`build_for_training`: the optimizer's and metrics' variables before `fit`
traces its train step.

Keras on TensorFlow builds the optimizer (and the compiled metrics) lazily,
inside the first trace of the train function, unless the model was made
under a `tf.distribute` strategy. A `tf.function` that creates variables on
its first trace is traced a second time to check that later calls create
none, so a fine-tuning run pays for tracing the whole forward pass,
backward pass and optimizer update twice before its first step (measured on
MiniLM with AdamW, 2 CPU cores: 18 s before the first step, 10 s once the
variables exist). `build_for_training` creates them up front, eagerly.

`make_single_train_function`: Keras on TensorFlow nests its train step in
two `tf.function`s (an inner one for the step, so that `jit_compile` covers
the step and not the iterator, and an outer one that reads the iterator);
every variable is captured into both and both are traced and converted.
Without XLA, one step per call, on one replica, the same step traced in one
function reaches its first step ~0.15 s sooner (MiniLM, 2 CPU cores) and
runs the same graph once inlined. tfft's tasks train through it (the
`SingleTrainFunction` mixin).

`trace_predict_function`: `model.predict` traces its predict function for
the first batch's shape and again, relaxed, for the last, smaller batch;
traced first for the dataset's own signature (batch axis unknown), it serves
every batch of every later `predict` on such batches (MiniLM, 2 CPU cores:
~1 s per trace). `tfft.Task.predict` does this.

`predict_batches`: `model.predict` traces its predict function for the first
batch's exact shape and again, shape-relaxed, for the last, smaller batch; a
run that predicts with several models (features for the cache, validation,
the test split) passes TensorFlow's "N out of the last M calls triggered
tf.function retracing" threshold. `predict_batches` traces one function per
call with the dataset's own relaxed signature.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import one_tf_variable_name
from tfft.adapt.gradual import GradualUnfreezing


def _label_spec(element_spec: Any) -> Any:
    """The label part of a `(inputs, labels[, weights])` dataset element spec."""
    if isinstance(element_spec, tuple) and len(element_spec) >= 2:
        return element_spec[1]
    return None


def _as_keras_tensor(spec: Any) -> Any:
    if isinstance(spec, tf.TensorSpec):
        return keras.KerasTensor(tuple(spec.shape), dtype=spec.dtype.name)
    return None


def build_for_training(model: keras.Model, element_spec: Any = None,
                       callbacks: Any = None) -> None:
    """Creates a compiled model's optimizer and metric variables before `fit`.

    Does nothing for parts already built or a model that is not compiled, so
    calling it before every `fit` is cheap.

    Args:
        model: keras.Model. A compiled model.
        element_spec: the training dataset's `element_spec` (`(inputs,
            labels)`), used to build the compiled metrics for labels of that
            shape. None builds the optimizer only.
        callbacks: the callbacks `fit` will get. A `GradualUnfreezing` among
            them builds the optimizer on every block it will open (built on
            the trainable variables of the moment, the optimizer would have to
            be replaced when the first block opens).

    Example:

    >>> task.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    >>> tfft.training.build_for_training(task, train.element_spec)
    >>> task.fit(train)   # the train step is traced once
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(model, "compiled", False):
        return
    with model.distribute_strategy.scope(), one_tf_variable_name():
        # A keras.callbacks.CallbackList keeps its callbacks in `.callbacks`.
        for callback in getattr(callbacks, "callbacks", callbacks) or ():
            if isinstance(callback, GradualUnfreezing) and not optimizer.built:
                callback.prepare_optimizer()
                optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        y_true = _as_keras_tensor(_label_spec(element_spec))
        outputs = getattr(model, "outputs", None)
        if y_true is None or not outputs or len(outputs) != 1:
            return
        for metric in model.metrics:
            # Plain metrics make their variables when constructed and carry no
            # `built`; the compiled-metrics container builds its metrics from
            # the label and prediction shapes on first use, and `build` does
            # that now.
            if getattr(metric, "built", True) is False:
                metric.build(y_true, outputs[0])


def _without_optionals(data: Any) -> Any:
    """Keras' convention: an empty `tf.experimental.Optional` in a batch stands for None."""
    return keras.tree.map_structure(
        lambda item: None if isinstance(item, tf.experimental.Optional) else item, data
    )


#: What Keras' `fit` passes its train function: one of these, or a list of batches.
ITERATOR_TYPES = (tf.data.Iterator, tf.distribute.DistributedIterator)


def make_single_train_function(model: keras.Model) -> Any:
    """`model`'s train function as one `tf.function`, or None where Keras' own applies.

    Keeps the contract of the function Keras makes: called with a tf.data
    iterator it trains on the next batch and returns the step's logs (an
    exhausted iterator raises `OutOfRangeError`, as Keras' does with one
    step per call); called with a list of batches (`train_on_batch`) it
    trains on the first. Returns None (use Keras' function) on another
    backend, run eagerly, with `jit_compile`, with `steps_per_execution`
    above 1 or under several replicas (Keras' function reduces their
    outputs).

    Args:
        model: keras.Model. A compiled model.

    Returns:
        The train function (its `traced` attribute is the `tf.function`
        that trains on an iterator), or None.
    """
    if (keras.backend.backend() != "tensorflow" or model.run_eagerly or model.jit_compile
            or getattr(model, "steps_per_execution", 1) != 1
            or model.distribute_strategy.num_replicas_in_sync > 1):
        return None

    @tf.autograph.experimental.do_not_convert
    def one_step(data):
        return model.distribute_strategy.run(model.train_step, args=(_without_optionals(data),))

    @tf.autograph.experimental.do_not_convert
    def step_on_iterator(iterator):
        return one_step(iterator.get_next())

    on_iterator = tf.function(step_on_iterator, reduce_retracing=True)
    on_batch = tf.function(one_step, reduce_retracing=True)

    def function(iterator):
        if isinstance(iterator, ITERATOR_TYPES):
            return on_iterator(iterator)
        for data in iterator:
            return on_batch(data)
        raise ValueError("The train function got no batch: pass a list of one batch.")

    function.traced = on_iterator  # the tf.function, for its concrete graph
    return function


# What TensorFlow's remapper fuses into one CPU kernel with a gain worth its pass:
# convolutions and batch norms (with their bias and activation), and 2-D MatMuls
# followed by BiasAdd (dense layers on 2-D inputs, as TF1-style and TF Hub models
# write them). A transformer's dense layers run on 3-D inputs (Tensordot's reshapes
# or a BatchMatMul before the BiasAdd), which it leaves alone; a classifier head and
# a pooler make a couple of chains.
_FUSED_BY_REMAPPER = frozenset({"Conv2D", "Conv3D", "DepthwiseConv2dNative", "FusedBatchNorm",
                                "FusedBatchNormV2", "FusedBatchNormV3"})
_DENSE_BIAS_CHAINS = 4


def remapper_has_work(concrete_function: Any) -> bool:
    """Whether TensorFlow's remapper has fusions to make in a traced step.

    True when the step (its graph and every function it calls) holds a
    convolution or batch norm, or at least four MatMul -> BiasAdd chains
    (a function and its gradient's forward copy count twice). A Keras 3
    transformer's step has none of these but a head's and a pooler's, and
    on MiniLM's step the pass ran 65-75 ms (2 CPU cores) for that one
    fusion, with the same step times without it (`tfft.Task` then turns it
    off; `tfft._compat.graph_optimizer_light`).

    Args:
        concrete_function: a traced `tf.function` (`ConcreteFunction`).

    Returns:
        bool.
    """
    graph_def = concrete_function.graph.as_graph_def()
    chains = 0
    for nodes in [graph_def.node, *(f.node_def for f in graph_def.library.function)]:
        producer = {node.name: node.op for node in nodes}
        for node in nodes:
            if node.op in _FUSED_BY_REMAPPER:
                return True
            if (node.op == "BiasAdd" and node.input
                    and producer.get(node.input[0].lstrip("^").split(":")[0]) == "MatMul"):
                chains += 1
    return chains >= _DENSE_BIAS_CHAINS


class SingleTrainFunction:
    """`keras.Model` mixin: `fit` trains through `make_single_train_function`.

    Where that returns None (XLA, several steps per call, several replicas,
    run eagerly), Keras' own train function is made.

    Example:

    >>> class MyTask(SingleTrainFunction, keras.Model): ...
    """

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        function = make_single_train_function(self)
        if function is None:
            super().make_train_function(force)
            return self.train_function
        self.train_function = function
        return function


def trace_predict_function(model: keras.Model, element_spec: Any) -> None:
    """Traces `model.predict`'s function for batches of `element_spec`, if not yet.

    Keras traces the function for the first batch's exact shape, then again
    for the last batch; traced here for the dataset's element spec (batch
    axis `None`), it serves both, and every later `predict` on batches of
    that spec. Does nothing where Keras calls the function differently: run
    eagerly, under several replicas, or several steps per call.

    Args:
        model: keras.Model.
        element_spec: the predicted dataset's `element_spec`.
    """
    if (model.run_eagerly or model.distribute_strategy.num_replicas_in_sync > 1
            or getattr(model, "steps_per_execution", 1) != 1):
        return
    model.make_predict_function()
    if isinstance(model.predict_function, tf.types.experimental.PolymorphicFunction):
        # Keras calls it with a list of one batch per step.
        model.predict_function.get_concrete_function([element_spec])


def _relaxed(spec: Any) -> Any:
    return tf.nest.map_structure(
        lambda s: tf.TensorSpec([None] * len(s.shape), s.dtype, name=s.name), spec
    )


def predict_batches(model: keras.Model, dataset: tf.data.Dataset,
                    verbose: str | int = "auto") -> Any:
    """`model(x, training=False)` over a batched dataset, traced once.

    Same outputs as `model.predict(dataset)` (concatenated along the batch
    axis) for a dataset of input batches or `(inputs, ...)` tuples. Under a
    strategy with several replicas it is `model.predict` itself, which splits
    batches across them.

    Args:
        model: keras.Model.
        dataset: tf.data.Dataset of batched inputs, or of `(inputs, targets)`.
        verbose: "auto", 0, 1 or 2. A progress bar when 1 or "auto".
            Defaults to "auto".

    Returns:
        The outputs as NumPy arrays (a nested structure for several outputs).
    """
    if model.distribute_strategy.num_replicas_in_sync > 1:
        return model.predict(dataset, verbose=verbose)
    spec = dataset.element_spec
    with_targets = isinstance(spec, tuple)
    inputs_spec = spec[0] if with_targets else spec

    @tf.function(input_signature=[_relaxed(inputs_spec)], autograph=False)
    def step(x):
        return model(x, training=False)

    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(
        cardinality if cardinality > 0 else None,
        verbose=1 if verbose == "auto" else int(verbose),
    ) if verbose else None
    outputs = []
    for i, element in enumerate(dataset):
        outputs.append(step(element[0] if with_targets else element))
        if progress is not None:
            progress.update(i + 1)
    if not outputs:
        raise ValueError("predict_batches got an empty dataset: nothing to predict.")
    return tf.nest.map_structure(
        lambda *parts: np.concatenate([np.asarray(p) for p in parts], axis=0), *outputs
    )
