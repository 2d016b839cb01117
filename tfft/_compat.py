"""Every private Keras/TensorFlow API tfft relies on, one small function each.

Keras 3 has no public way to do these few things, so tfft reaches into its
internals here and nowhere else. `tests/test_compat.py` checks each function
against the installed Keras and fails with the Keras version in the message
when an upgrade changes what a function relies on: one file to fix.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

KERAS_VERSION = keras.__version__


# ---------------------------------------------------------------------------- layers


def sublayers(layer) -> list:
    """Returns the direct sublayers of a Keras layer or model.

    Models list them publicly (`model.layers`); a plain `keras.Layer` that
    holds layers as attributes (a transformer block, a wrapper) keeps them
    only in the private `_layers` list Keras tracks them in.
    """
    children = getattr(layer, "layers", None) or getattr(layer, "_layers", None) or []
    return list(children)


def track_layer_variable(layer, variable) -> None:
    """Makes `layer` own `variable` as if it had created it with `add_weight`.

    For variables made outside `build` (e.g. wrapping a SavedModel's
    tf.Variables): they then appear in `layer.weights`, follow
    `layer.trainable` and are saved with the layer. Uses
    `Layer._track_variable`.
    """
    layer._track_variable(variable)


def dense_kernel_variable(layer):
    """Returns the stored kernel variable of a Dense/EinsumDense layer.

    With LoRA enabled, `layer.kernel` is the merged tensor
    `kernel + lora_a @ lora_b * scale`, not a variable; the variable the
    layer stores is `layer._kernel`.
    """
    return layer._kernel


# ---------------------------------------------------------------------------- variables


def variable_value(weight):
    """Returns the backend variable inside a Keras 3 variable (`weight._value`).

    On TensorFlow it is a `tf.Variable`, a distributed one when the weight was
    created under a `tf.distribute` strategy. Anything that is not a Keras
    variable is returned unchanged.
    """
    value = getattr(weight, "_value", None) if isinstance(weight, keras.Variable) else None
    return value if value is not None else weight


# ---------------------------------------------------------------------------- optimizers


def optimizer_variable_key(optimizer, variable) -> Any:
    """The key a Keras optimizer files `variable` under (`Optimizer._var_key`)."""
    return optimizer._var_key(variable)


def optimizer_knows(optimizer, variables) -> bool:
    """True when `optimizer` was built with every one of `variables`.

    A Keras 3 optimizer refuses variables it was not built with; it keeps the
    ones it was built with in the private `_trainable_variables_indices`.
    A wrapper with an `inner_optimizer` (LossScaleOptimizer) is looked through.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    index = getattr(inner, "_trainable_variables_indices", None)
    if index is None:
        return False
    return all(inner._var_key(v) in index for v in variables)


def optimizer_built_variables(optimizer) -> list:
    """The trainable variables a built optimizer was built with (`_trainable_variables`)."""
    return list(optimizer._trainable_variables)


def track_optimizer_variable(optimizer, variable) -> None:
    """Makes `optimizer` own `variable`: it is saved and listed in `optimizer.variables`.

    For the slot variables of optimizers nested inside another (per-group
    learning rates). Uses `Optimizer._track_variable`.
    """
    optimizer._track_variable(variable)


def adam_variable_state(optimizer, variable) -> tuple[Any, Any, bool]:
    """`(momentum, velocity, decays)` of one variable in a built Keras Adam-family optimizer.

    The moment slots sit in the private `_momentums`/`_velocities` lists at
    `_get_variable_index(variable)`; whether the variable takes weight decay
    (not excluded by `exclude_from_weight_decay`) is `_use_weight_decay`.
    """
    index = optimizer._get_variable_index(variable)
    return (optimizer._momentums[index], optimizer._velocities[index],
            bool(optimizer._use_weight_decay(variable)))


# ---------------------------------------------------------------------------- training


def set_symbolic_build_batch(model, transform: Callable[[Any], Any]) -> None:
    """Makes `model.fit` build `model` from `transform(first batch)` under its strategy.

    Keras 3 on TensorFlow builds a model at the start of `fit`/`evaluate` in
    `Trainer._maybe_symbolic_build`, from one batch of the distributed
    iterator; under MultiWorkerMirroredStrategy it all-reduces that batch
    first, which fails for `(x, y)` tuples and dicts
    (keras-team/keras#20329). This replaces that step on `model` only: the
    first batch goes through `transform` (e.g. take this worker's local
    value) and then to `Trainer._symbolic_build`. Without a strategy
    (`model._distribute_strategy is None`) nothing is built early, as in
    Keras.
    """

    def build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = transform(next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    # Set on the instance, past Keras's attribute tracking: it is not model state.
    object.__setattr__(model, "_maybe_symbolic_build", types.MethodType(build, model))


_LIGHT_OPTIONS: dict[tuple[bytes, bool], Any] = {}


# Passes that changed little or nothing in MiniLM's train step (Grappler's log:
# the layout pass rewrites for GPUs; constant folding removed 5 of ~2,460
# nodes, the others none; together with the tfg pipeline ~0.15 s of it).
_LIGHT_PASSES_OFF = ("layout_optimizer", "constant_folding", "shape_optimization",
                     "loop_optimization", "experimental_conditional_code_motion")


@contextlib.contextmanager
def graph_optimizer_light(remapper: bool = True) -> Iterator[None]:
    """Functions first called inside run TensorFlow's graph optimiser lighter.

    One Grappler round instead of two, without the layout, memory,
    constant-folding, shape, loop and conditional-code-motion passes or the
    MLIR (tfg) pipeline, for the calls made in this thread inside the `with`
    block (TensorFlow's per-thread `context.function_call_options`, whose
    config is an attribute of each function call and is what Grappler reads
    when it instantiates the function; a function called both ways is
    optimised once per way). The passes that stay (pruning, common
    subexpressions, arithmetic, the remapper's fused kernels, dependencies,
    function inlining) are the ones that change a transformer's train step.
    Options set by the user (`tf.config.optimizer.set_experimental_options`
    or the global config) are kept; only options left at their default change.

    Args:
        remapper: bool. Keep the remapper (fused convolution, batch-norm and
            dense-plus-bias kernels). False turns it off too, for a graph it
            has nothing to fuse in (`tfft.training.tracing.remapper_has_work`).
    """
    ctx = context.context()
    before = ctx.function_call_options
    key = (before.config_proto_serialized, remapper)
    options = _LIGHT_OPTIONS.get(key)
    if options is None:
        config = config_pb2.ConfigProto.FromString(key[0])
        rewrite = config.graph_options.rewrite_options
        rewriter = rewriter_config_pb2.RewriterConfig
        if rewrite.meta_optimizer_iterations == rewriter.DEFAULT_NUM_ITERS:
            rewrite.meta_optimizer_iterations = rewriter.ONE
        if rewrite.memory_optimization == rewriter.DEFAULT_MEM_OPT:
            rewrite.memory_optimization = rewriter.NO_MEM_OPT
        for name in _LIGHT_PASSES_OFF + (() if remapper else ("remapping",)):
            if getattr(rewrite, name) == rewriter.DEFAULT:
                setattr(rewrite, name, rewriter.OFF)
        rewrite.disable_tfg_optimizer = True
        options = context.FunctionCallOptions(executor_type=before.executor_type,
                                              config_proto=config)
        _LIGHT_OPTIONS[key] = options
    ctx.function_call_options = options
    try:
        yield
    finally:
        ctx.function_call_options = before


def _one_name(next_creator, **kwargs):
    kwargs["name"] = "Variable"
    return next_creator(**kwargs)


@contextlib.contextmanager
def one_tf_variable_name() -> Iterator[None]:
    """Keras variables made inside share one TensorFlow-level name (faster, eagerly).

    Eager TensorFlow keeps one kernel per op and attribute set, and a
    variable's TensorFlow name is an attribute of the op that makes it
    (`VarHandleOp`'s `debug_name`): each uniquely named variable builds a
    kernel of its own, ~0.7 ms on a 2-core CPU against ~0.15 ms for the
    whole variable otherwise. Keras names each optimizer slot after its
    weight, so building AdamW for MiniLM (206 slots) took 0.27 s, 0.14 s
    inside this block. Only the inner `tf.Variable`'s `name` changes
    (`variable.value.name`); the Keras name and path, which `.keras` files,
    `optimizer.variables` and checkpoints go by, stay. Does nothing under a
    strategy with several replicas, which names each replica's copy after
    the variable's name.
    """
    if tf.distribute.get_strategy().num_replicas_in_sync > 1:
        yield
        return
    with tf.variable_creator_scope(_one_name):
        yield


# ---------------------------------------------------------------------------- saving


def saving_load_order(saveable) -> list[str]:
    """The attribute names `keras.saving` walks on `saveable`, in the order it loads them.

    `keras.saving.load_model` restores the weights of a model's children in
    the order of `keras/src/saving/saving_lib.py:_walk_saveable`.
    """
    from keras.src.saving import saving_lib

    return [name for name, _ in saving_lib._walk_saveable(saveable)]


def saving_loads_graph_layers_first() -> bool:
    """True when `keras.saving` loads a functional model's graph layers before anything else.

    Keras (3.x, `_walk_saveable`) restores a Sequential or Functional model's
    `layers` first, then its other attributes in sorted order, so a
    Functional subclass can keep extra attributes pointing at layers of its
    graph (a Task's `backbone`, `head`): their weights are already restored
    from the graph and are not read twice.
    """

    class Probe(keras.Model):
        """A Functional subclass with an extra attribute sorted before "layers", as a Task."""

        def __init__(self, inputs, outputs):
            super().__init__(inputs, outputs)
            self.aaa_head = self.layers[-1]

    inputs = keras.Input((2,))
    order = saving_load_order(Probe(inputs, keras.layers.Dense(1)(inputs)))
    return bool(order) and order[0] == "layers"


# ---------------------------------------------------------------------------- export


_DEFAULT_SIGNATURE_LOCK = threading.RLock()


def write_export_archive(archive, path: str, concrete_endpoints: bool = False) -> None:
    """`archive.write_out(path)` with each variable stored once, and no needless traces.

    Keras 3 (3.12 to 3.15 at least; keras-team/keras#23553, open) keeps two
    objects per weight in an `ExportArchive`: the Keras variables `track()`
    collects (`archive._tf_trackable.variables` and its trainable and
    non-trainable lists) and the `tf.Variable`s the endpoints capture
    (`_all_variables`). TensorFlow's checkpoint tells objects apart by
    identity, so it writes every weight twice: twice the disk, and twice the
    variable memory in whatever loads the SavedModel (TF Serving included).
    Swapping the tracked lists for the `tf.Variable`s inside
    (`variable_value`) makes both lists hold the same objects, stored once.

    `write_out` also traces every tracked Keras model's forward pass for
    nothing: its search for lookup tables walks the models the way SavedModel
    does, which builds and traces each model's default serving signature
    (`_default_save_signature`). A default signature only captures what the
    model already holds, so the walk finds the same tables without it (the
    property is None meanwhile). SmolLM2's `generate` export (2 CPU cores):
    84 s -> 69 s; a MiniLM classifier's 5.6 s -> 4.9 s.

    Each endpoint is traced once, not twice: `write_out` lists the variables
    the endpoints use by tracing them outside the save, and
    `tf.saved_model.save` traces them again inside it (a `tf.function`'s
    cache key includes the save context). Here the listing runs inside a
    save context with the save's options, so the save reuses that trace (a
    MiniLM classifier's `serve`: ~2 s each on 2 CPU cores).

    `concrete_endpoints=True` saves endpoints a caller already traced
    outside the save as those concrete functions (SmolLM2's `generate`
    export: 69 s -> 42 s), but the reloaded attributes are then concrete
    functions, which take tensors of the signature's exact types only (no
    NumPy arrays, no optional arguments); the signatures are the same
    either way.
    """
    from keras.src.backend.tensorflow.layer import TFLayer
    from tensorflow.python.saved_model import save_context

    trackable = archive._tf_trackable
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        tracked = getattr(trackable, name, None)
        if tracked:
            setattr(trackable, name, [variable_value(v) for v in tracked])
    if concrete_endpoints:
        for name in archive._endpoint_names:
            concrete = archive._get_concrete_fn(name)
            if not isinstance(concrete, tf.types.experimental.ConcreteFunction):
                concrete = concrete.get_concrete_function()  # the add_endpoint trace
            setattr(trackable, name, concrete)
            # `_get_concrete_fn` returns the attribute itself for these names.
            archive._endpoint_signatures[name] = concrete.structured_input_signature
    # One export at a time swaps the class property (threads would restore each other's).
    with _DEFAULT_SIGNATURE_LOCK:
        default_signature = TFLayer.__dict__["_default_save_signature"]
        TFLayer._default_save_signature = property(lambda self: None)
        try:
            if not concrete_endpoints:
                # `write_out`'s own call would trace outside the save context.
                with save_context.save_context(tf.saved_model.SaveOptions()):
                    archive._filter_and_track_resources()
                archive._filter_and_track_resources = lambda: None
            archive.write_out(path, verbose=False)
        finally:
            TFLayer._default_save_signature = default_signature
            archive.__dict__.pop("_filter_and_track_resources", None)
