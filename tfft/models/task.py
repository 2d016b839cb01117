"""`Task`: what tfft fine-tunes — a backbone, its preprocessor, pooling and a task head.

A `Task` is a functional `keras.Model` over the backbone's preprocessed inputs
(layer `"backbone"` -> layer `"pooling"` -> layer `"head"`) that also carries
the backbone's `preprocessor`, its `BackboneInfo`, the freeze policy and the
class names. All of them are part of the model's config, so
`keras.saving.load_model("task.keras")` gives back the same task: trainable
flags, LoRA adapters (unmerged) and the preprocessor included.

`fit`, `predict` and `evaluate` take raw inputs (strings, 0-255 images) as
well as `tf.data` datasets of raw inputs; the preprocessor runs in the
`tf.data` pipeline, outside the training graph.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft._compat import dense_kernel_variable, graph_optimizer_light
from tfft.adapt import FreezePolicy, LoRA, apply_freeze, lora_layers, parse_freeze
from tfft.backbones import Backbone, BackboneInfo
from tfft.layers import BackboneLayer, Pooling, TaskHead
from tfft.layers.fused_ops import fused_training_ops
from tfft.training.tracing import (
    ITERATOR_TYPES,
    SingleTrainFunction,
    build_for_training,
    remapper_has_work,
    trace_predict_function,
)
from tfft.utils.tfdata import (
    XLA_WIDTH_MULTIPLE,
    continuous_epochs,
    pad_to_multiple,
    pipeline_options,
    takes_any_length,
    trim_to_longest,
    with_pipeline_options,
)

DEFAULT_BATCH_SIZE = 32
# Datasets `Task.make_dataset` returned: already preprocessed, so passing one back to
# fit/predict/evaluate must not preprocess it again. Image batches cannot tell by
# their values (float pixels at the input size may be raw or normalised), so the
# dataset object is remembered instead.
_MADE_DATASETS: weakref.WeakSet = weakref.WeakSet()


@keras.saving.register_keras_serializable(package="tfft")
class Task(SingleTrainFunction, keras.Model):
    """A pretrained backbone adapted to a task, taking raw inputs.

    Build one with `tfft.build_model(...)`; the constructor is for code that
    assembles the parts itself.

    Args:
        backbone_layer: BackboneLayer. The backbone, wrapped.
        pooling: Pooling. Pools the backbone's features.
        head: TaskHead. The task layer.
        preprocessor: keras.Layer or None. Maps raw inputs to the backbone's
            inputs; runs in the `tf.data` pipeline. None: the task takes
            preprocessed inputs only.
        backbone_info: BackboneInfo or dict. What the backbone is (source,
            family, modality ...).
        freeze_policy: FreezePolicy, str, dict or None. Recorded and kept in
            the config; `Task` does not apply it (see `freeze`).
        class_names: list of str or None. Names of the classes, in label order.

    Example:

    >>> task = tfft.build_model("minilm", task="multiclass", num_classes=2)
    >>> task.fit(["great film", "dull film"], [1, 0], epochs=1)
    >>> task.predict(["a fine film"])
    """

    def __init__(
        self,
        backbone_layer: BackboneLayer,
        pooling: Pooling,
        head: TaskHead,
        preprocessor: keras.layers.Layer | None = None,
        backbone_info: BackboneInfo | Mapping | None = None,
        freeze_policy: FreezePolicy | str | Mapping | None = None,
        class_names: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(backbone_layer, BackboneLayer):
            raise TypeError(
                "Task needs a tfft BackboneLayer as backbone_layer. Received: "
                f"{type(backbone_layer).__name__}"
            )
        if isinstance(backbone_info, Mapping):
            backbone_info = _info_from_dict(backbone_info)
        if class_names is not None:
            class_names = [str(name) for name in class_names]
            expected = 2 if head.task == "binary" else head.output_units
            if len(class_names) != expected:
                raise ValueError(
                    f"class_names has {len(class_names)} names but the {head.task} head has "
                    f"{expected} classes. Received: class_names={class_names!r}"
                )
        inputs = _symbolic_inputs(backbone_layer.backbone)
        features = backbone_layer(inputs)
        mask = None
        if isinstance(inputs, dict) and backbone_info is not None and backbone_info.mask_key:
            mask = inputs.get(backbone_info.mask_key)
        outputs = head(pooling(features, mask=mask))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.preprocessor = preprocessor
        # Loaded after the graph's layers (see `_LoRAState`), so it can put back
        # the unmerged LoRA weights Keras merges on save.
        self.lora_state = _LoRAState(name="lora_state")
        # A weak reference: Keras' saving walks attributes, and must not walk
        # back up into the task.
        object.__setattr__(self.lora_state, "_task_ref", weakref.ref(self))
        # Plain Python values, kept out of Keras' tracking.
        object.__setattr__(self, "_backbone_info", backbone_info)
        object.__setattr__(self, "_class_names", class_names)
        object.__setattr__(self, "_freeze_policy", None)
        if freeze_policy is not None:
            self.freeze_policy = _as_policy(freeze_policy)

    # -- the parts ---------------------------------------------------------------

    @property
    def backbone_layer(self) -> BackboneLayer:
        """The `BackboneLayer` (layer `"backbone"`) that calls the backbone."""
        return self.get_layer("backbone")

    @property
    def backbone(self) -> keras.Model:
        """The pretrained backbone model (inside `backbone_layer`)."""
        return self.backbone_layer.backbone

    @property
    def pooling(self) -> Pooling:
        return self.get_layer("pooling")

    @property
    def head(self) -> TaskHead:
        return self.get_layer("head")

    @property
    def task(self) -> str:
        """The head's task: `"binary"`, `"multiclass"`, `"multilabel"` ..."""
        return self.head.task

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def backbone_info(self) -> BackboneInfo | None:
        return self._backbone_info

    @property
    def class_names(self) -> list[str] | None:
        return None if self._class_names is None else list(self._class_names)

    @class_names.setter
    def class_names(self, names: list[str] | None) -> None:
        object.__setattr__(self, "_class_names", None if names is None else list(names))

    @property
    def freeze_policy(self) -> FreezePolicy | None:
        """The freeze policy last applied (`freeze`, `tfft.apply_freeze`)."""
        return self._freeze_policy

    @freeze_policy.setter
    def freeze_policy(self, policy: FreezePolicy | None) -> None:
        if policy is not None and not isinstance(policy, FreezePolicy):
            raise TypeError(f"freeze_policy must be a FreezePolicy. Received: {policy!r}")
        object.__setattr__(self, "_freeze_policy", policy)

    def as_backbone(self) -> Backbone:
        """The task's backbone as a `tfft.Backbone` (model, info, preprocessor, blocks)."""
        info = self.backbone_info or BackboneInfo(name=self.backbone.name, source="model",
                                                  modality="text")
        return Backbone(self.backbone, info, preprocessor=self.preprocessor,
                        block_names=self.backbone_layer.block_names)

    def freeze(self, policy: FreezePolicy | str) -> FreezePolicy:
        """Applies a freeze policy (`"top_k:2"`, `tfft.LoRA(8)` ...); returns it.

        Recompile before `fit` (`tfft.compile_model`): Keras builds the train
        step with the trainable variables of the moment.
        """
        return apply_freeze(self, policy)

    def to_sequential(self) -> keras.Sequential:
        """`keras.Sequential([backbone, pooling, head])` sharing this task's layers.

        The seed recipe's form, for single-input backbones (images, TF Hub
        vectors). It takes preprocessed inputs; run `preprocessor` first.
        """
        spec = self.backbone.input
        if isinstance(spec, (dict, list, tuple)):
            raise ValueError(
                f"to_sequential needs a backbone with one input; {self.backbone.name!r} "
                f"takes {len(spec)} ({sorted(spec) if isinstance(spec, dict) else 'a list'}). "
                "Use the task itself, a functional model."
            )
        return keras.Sequential(
            [keras.Input(shape=spec.shape[1:], dtype=spec.dtype), self.backbone_layer,
             self.pooling, self.head],
            name=f"{self.name}_sequential",
        )

    # -- raw inputs ----------------------------------------------------------------

    def preprocess(self, x: Any) -> Any:
        """Maps one batch of raw inputs to the backbone's inputs (identity if none)."""
        if self.preprocessor is None or self._is_preprocessed(x):
            return x
        if isinstance(x, (list, tuple)):
            x = _as_array_tree(x)
        return self.preprocessor(x)

    def make_dataset(
        self,
        x: Any,
        y: Any = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        shuffle: bool = False,
        seed: int | None = None,
        sample_weight: Any = None,
    ) -> tf.data.Dataset:
        """A batched `tf.data.Dataset` of preprocessed inputs (and targets).

        Batches of texts are cut to their longest sequence where that cannot
        change a result (`trim_batches`).

        Args:
            x: raw inputs (list or array of strings or images, a dict of
                arrays) or a `tf.data.Dataset` of raw or preprocessed batches.
                A dataset this method returned passes through as it is (so
                `task.predict(task.make_dataset(images))` preprocesses once);
                one derived from it (`.repeat()`, `.take()`) is a new dataset:
                give image ones to `keras.Model.predict(task, ...)` or build
                them from raw batches.
            y: targets, or None.
            batch_size: int. Examples per batch for array inputs.
            shuffle: bool. Reshuffle array inputs every epoch.
            seed: int. Shuffle seed.
            sample_weight: per-example weights, or None.
        """
        if isinstance(x, tf.data.Dataset):
            if y is not None:
                raise ValueError(
                    "y must be None when x is a tf.data.Dataset: the dataset yields "
                    "(inputs, targets) itself."
                )
            if x in _MADE_DATASETS:
                return x
            dataset = x
        else:
            if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int. Received: {batch_size!r}")
            x = _as_array_tree(x)
            packed = keras.utils.pack_x_y_sample_weight(
                x, None if y is None else np.asarray(y),
                None if sample_weight is None else np.asarray(sample_weight),
            )
            dataset = tf.data.Dataset.from_tensor_slices(packed).with_options(
                pipeline_options()
            )
            if shuffle:
                size = len(next(iter(tf.nest.flatten(x))))
                dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
            dataset = dataset.batch(batch_size)
        if self.preprocessor is None or self._is_preprocessed(_x_spec(dataset.element_spec)):
            multiple = self._compiled_width_multiple(_x_spec(dataset.element_spec))
            if multiple:
                limit = getattr(self.preprocessor, "sequence_length", None)
                tokenizer = getattr(self.preprocessor, "tokenizer", None)
                pad_id = getattr(tokenizer, "pad_token_id", None) or 0

                def pad(*element):
                    features = pad_to_multiple(element[0], multiple, limit, pad_id)
                    return features if len(element) == 1 else (features, *element[1:])

                dataset = with_pipeline_options(
                    dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE))
            _MADE_DATASETS.add(dataset)
            return dataset

        preprocessor = self._preprocess_function()
        multiple = self._trim_multiple()

        def preprocess(*element):
            features = preprocessor(element[0])
            if multiple:
                features = trim_to_longest(features, multiple)
            if len(element) == 1:
                return features
            return (features, *element[1:])

        dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )
        if isinstance(x, tf.data.Dataset):  # arrays got them with `from_tensor_slices`
            dataset = with_pipeline_options(dataset)
        _MADE_DATASETS.add(dataset)
        return dataset

    #: Whether `make_dataset` cuts each batch of texts to its longest
    #: sequence instead of the preprocessor's fixed `sequence_length` (MiniLM:
    #: 128 tokens; a Rotten Tomatoes review has ~28). The model masks the
    #: padding out, so outputs, losses and gradients are those of the padded
    #: batch (to float rounding), at a fraction of the compute. It applies to
    #: what `fit`, `evaluate` and `predict` make from raw texts, and to the
    #: `tfft finetune` job. None (default): when it cannot change a result —
    #: the backbone takes any length, pools over the `padding_mask` and the
    #: task predicts one output per example — and not on TPUs, which compile
    #: one program per shape; under XLA (`jit_compile`) widths round up to
    #: multiples of 16 (at most 8 shapes for 128 tokens). False keeps the
    #: fixed length; True cuts whenever the batches have a `padding_mask`.
    trim_batches: bool | None = None

    def _trim_multiple(self) -> int:
        """What `make_dataset` rounds a cut text batch's width up to; 0: no cut."""
        if self.trim_batches is None:
            if (not self._padding_changes_nothing() or not takes_any_length(self)
                    or _on_tpu_strategy(self.distribute_strategy)):
                return 0
        elif not self.trim_batches:
            return 0
        return XLA_WIDTH_MULTIPLE if self.jit_compile is True else 1

    def _padding_changes_nothing(self) -> bool:
        """Whether right padding leaves every output as it is.

        The backbone masks it out (`padding_mask`) and the task predicts one
        output per example (not per token).
        """
        info = self.backbone_info
        return (info is not None and info.mask_key == "padding_mask"
                and self.pooling.mode != "none")

    def _compiled_width_multiple(self, x_spec: Any) -> int:
        """What `make_dataset` pads a tokenised dataset's varying widths up to; 0: nothing.

        XLA (`jit_compile`, and every TPU program) compiles once per input
        shape, and length-bucketed batches (`make_text_dataset(bucketing=True)`)
        come in up to `sequence_length` widths: a MiniLM train step compiled
        ~6 s per new width on this CPU. Rounding them up to
        `XLA_WIDTH_MULTIPLE` leaves at most 8 shapes for 128 tokens, with the
        outputs unchanged where cutting is (`trim_batches`): the padding is
        masked out and there is one output per example.
        """
        if self.trim_batches is False:
            return 0
        if not (self.jit_compile is True or _on_tpu_strategy(self.distribute_strategy)):
            return 0
        if not self._padding_changes_nothing():
            return 0
        mask = x_spec.get("padding_mask") if isinstance(x_spec, Mapping) else None
        if mask is None or len(mask.shape) != 2 or mask.shape[1] is not None:
            return 0
        return XLA_WIDTH_MULTIPLE

    def _preprocess_function(self) -> Any:
        """The preprocessor as one `tf.function`, reused by every dataset `make_dataset` makes.

        `Dataset.map` traces its function for every new dataset, and tracing a
        tokenizer and its packer builds ~1,000 ops (MiniLM: ~1 s on 2 CPU
        cores); calling this function from the map reuses its trace for inputs
        of the same type. It is made again when the preprocessor, or its
        config (a new `sequence_length`, say), changes. A preprocessor without a
        config is mapped as it is, traced per dataset.
        """
        try:
            config = json.dumps(self.preprocessor.get_config(), sort_keys=True, default=str)
        except Exception:  # no config to tell a changed preprocessor by
            return self.preprocessor
        key = (id(self.preprocessor), config)
        cached = self.__dict__.get("_preprocess_cache")
        if cached is None or cached[0] != key:
            call = self.preprocessor.__call__
            # Out of Keras' and SavedModel's tracking: a plain tuple, not an attribute
            # holding a tf.function (SavedModel would export it).
            cached = (key, tf.function(lambda x: call(x)))
            object.__setattr__(self, "_preprocess_cache", cached)
        return cached[1]

    #: Whether the train step traces GELU, layer normalisation, dropout and
    #: attention with tfft's hand-written gradients
    #: (`tfft.layers.fused_training_ops`: the same function, a smaller graph,
    #: faster steps on CPUs), and TensorFlow optimises that graph in one
    #: round of Grappler without the passes that change nothing in a CPU
    #: step (layout, memory, constant folding, shape, loop, conditional code
    #: motion, MLIR, and the remapper when the step has nothing for it to
    #: fuse: `tfft._compat.graph_optimizer_light`).
    #: None (default): when training on CPUs only (no GPU or TPU visible),
    #: where it was measured; True or False forces it. Set it before the
    #: first `fit`: the step is traced once.
    fused_ops: bool | None = None

    #: Whether the train step traces each group of the model's repeated
    #: identical blocks (a transformer's layers) once and calls that trace
    #: for every block of the group (`tfft.layers.repeated_blocks`): the
    #: steps compute the same, the trace is shorter (MiniLM: 1,166 graph
    #: nodes instead of 3,380). None (default): as `fused_ops`. Set it
    #: before the first `fit`. Never under XLA (`jit_compile=True`): with
    #: the shared calls in it, XLA compiled the whole step again at every
    #: step (MiniLM on this CPU: 4-5 s per step instead of 0.26 s).
    share_blocks: bool | None = None

    def _fused_ops_on(self) -> bool:
        return self.fused_ops if self.fused_ops is not None else _training_on_cpu()

    def _share_blocks_on(self) -> bool:
        if self.jit_compile is True:
            return False
        return self.share_blocks if self.share_blocks is not None else self._fused_ops_on()

    def train_step(self, data):
        with fused_training_ops(self, self._fused_ops_on(), self._share_blocks_on()):
            return super().train_step(data)

    def make_train_function(self, force=False):
        made = self.train_function
        # One tf.function where Keras nests two (`SingleTrainFunction`).
        function = super().make_train_function(force)
        if function is made or function is None or not self._fused_ops_on():
            return function

        remapper = None  # decided once, from the first traced step

        def train_function(*args):
            nonlocal remapper
            if remapper is None:
                remapper = _step_needs_remapper(function, args)
            with graph_optimizer_light(remapper):
                return function(*args)

        self.train_function = train_function
        return train_function

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, **kwargs):
        """`keras.Model.fit` that also takes raw inputs (see the class docstring)."""
        if self._takes_arrays_as_is(x):
            # Keras shuffles arrays only; for a dataset or generator it warns that
            # shuffle=True (this method's default) is ignored.
            shuffle = shuffle and isinstance(x, (np.ndarray, list, tuple, Mapping, tf.Tensor))
            # The optimizer's and metrics' variables now, so the train step traces once.
            build_for_training(self, _element_spec(x, y), callbacks)
            # A dataset: every epoch from one pipeline (arrays are Keras' own).
            x, kwargs["steps_per_epoch"] = continuous_epochs(x, kwargs.get("steps_per_epoch"))
            return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose,
                               callbacks=callbacks, validation_split=validation_split,
                               validation_data=validation_data, shuffle=shuffle,
                               class_weight=class_weight, sample_weight=sample_weight,
                               **kwargs)
        if validation_split:
            if isinstance(x, tf.data.Dataset) or validation_data is not None:
                raise ValueError(
                    "validation_split works with array inputs and no validation_data. "
                    f"Received: validation_split={validation_split!r}"
                )
            (x, y, sample_weight), validation_data = _split_tail(
                x, y, sample_weight, validation_split
            )
        batch = batch_size or DEFAULT_BATCH_SIZE
        train = self.make_dataset(x, y, batch_size=batch, shuffle=shuffle,
                                  sample_weight=sample_weight)
        if validation_data is not None:
            validation_data = self._as_eval_dataset(validation_data, batch,
                                                    kwargs.get("validation_steps"))
        build_for_training(self, train.element_spec, callbacks)
        train, kwargs["steps_per_epoch"] = continuous_epochs(train, kwargs.get("steps_per_epoch"))
        # The dataset shuffles itself (array inputs) or arrives shuffled (tf.data).
        return super().fit(train, epochs=epochs, verbose=verbose, callbacks=callbacks,
                           validation_data=validation_data, class_weight=class_weight,
                           shuffle=False, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 **kwargs):
        """`keras.Model.evaluate` that also takes raw inputs (texts run as in `predict`)."""
        if self._takes_arrays_as_is(x):
            return super().evaluate(x, y, batch_size=batch_size, verbose=verbose,
                                    sample_weight=sample_weight, **kwargs)
        # Shortest first (the metrics do not depend on the order).
        data = self._as_eval_dataset((x, y, sample_weight), batch_size or DEFAULT_BATCH_SIZE,
                                     kwargs.get("steps"))
        return super().evaluate(data, verbose=verbose, **kwargs)

    def predict(self, x, batch_size=None, verbose="auto", **kwargs):
        """`keras.Model.predict` that also takes raw inputs.

        An array or list of raw texts runs shortest first, in batches cut to
        their longest text (`trim_batches`), unless `steps` is given; the
        outputs come back in `x`'s order (batch callbacks see the run's).
        """
        if self._takes_arrays_as_is(x):
            return super().predict(x, batch_size=batch_size, verbose=verbose, **kwargs)
        order = self._shortest_first(x, kwargs.get("steps"))
        if order is not None:
            x = _take(x, order)
        data = self.make_dataset(x, batch_size=batch_size or DEFAULT_BATCH_SIZE)
        trace_predict_function(self, data.element_spec)  # one trace, not two
        outputs = super().predict(data, verbose=verbose, **kwargs)
        if order is None:
            return outputs
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return tf.nest.map_structure(lambda a: a[inverse], outputs)

    def _shortest_first(self, x, steps):
        """An order of raw texts `x`, shortest first, or None to keep theirs.

        `predict` and `evaluate` run batches cut to their longest text
        (`trim_batches`); batched in order of length, those batches pad
        little. The length in characters stands in for the length in
        tokens. None when batches are not cut, for inputs other than
        arrays or lists of strings (or dicts of them, for text pairs), and
        when `steps` asks for the first batches only.
        """
        if steps is not None or isinstance(x, (tf.data.Dataset, tf.Tensor)):
            return None
        columns = tf.nest.flatten(_as_array_tree(x))
        if not columns or any(c.ndim != 1 or c.dtype.kind not in "OSU" for c in columns):
            return None
        if len(columns[0]) < 2 or not self._trim_multiple():
            return None
        lengths = sum(np.fromiter(map(len, c), dtype=np.int64, count=len(c)) for c in columns)
        return np.argsort(lengths, kind="stable")

    def predict_on_batch(self, x):
        """`keras.Model.predict_on_batch` that also takes one batch of raw inputs."""
        return super().predict_on_batch(self.preprocess(x))

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """`keras.Model.test_on_batch` that also takes one batch of raw inputs."""
        return super().test_on_batch(self.preprocess(x), y, sample_weight=sample_weight,
                                     return_dict=return_dict)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """`keras.Model.train_on_batch` that also takes one batch of raw inputs."""
        return super().train_on_batch(self.preprocess(x), y, sample_weight=sample_weight,
                                      class_weight=class_weight, return_dict=return_dict)

    def _as_eval_dataset(self, data, batch_size, steps=None):
        if isinstance(data, tf.data.Dataset):
            return self.make_dataset(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(tuple(data))
        order = self._shortest_first(x, steps)
        if order is not None:
            x, y, sample_weight = (None if v is None else _take(v, order)
                                   for v in (x, y, sample_weight))
        return self.make_dataset(x, y, batch_size=batch_size, sample_weight=sample_weight)

    def _takes_arrays_as_is(self, x):
        """True when Keras' own input handling applies: nothing to preprocess.

        Arrays, lists, dicts and tensors are checked; a `tf.data.Dataset` is
        mapped through `make_dataset`. Anything else (a distributed dataset,
        a generator, a `keras.utils.PyDataset`) goes to Keras as it is: make
        it from `task.make_dataset(...)` first.
        """
        if self.preprocessor is None:
            return True
        if isinstance(x, tf.data.Dataset):
            return False
        if isinstance(x, (np.ndarray, list, tuple, Mapping, tf.Tensor)):
            return self._is_preprocessed(x)
        return True

    def _is_preprocessed(self, x):
        """Text batches already tokenised: a dict with the backbone's input keys."""
        keys = _input_keys(self.backbone)
        if not keys or not isinstance(x, Mapping):
            return False
        return keys <= set(x)

    # -- serialisation ---------------------------------------------------------------

    def get_config(self) -> dict:
        info = self.backbone_info
        policy = self.freeze_policy
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone_layer": keras.saving.serialize_keras_object(self.backbone_layer),
            "pooling": keras.saving.serialize_keras_object(self.pooling),
            "head": keras.saving.serialize_keras_object(self.head),
            "preprocessor": (None if self.preprocessor is None
                             else keras.saving.serialize_keras_object(self.preprocessor)),
            "backbone_info": None if info is None else info.to_dict(),
            "freeze_policy": None if policy is None else policy.to_dict(),
            "class_names": self.class_names,
        }

    @classmethod
    def from_config(cls, config: dict) -> Task:
        config = dict(config)
        for key in ("backbone_layer", "pooling", "head", "preprocessor"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        policy = config.get("freeze_policy")
        task = cls(**config)
        if isinstance(task.freeze_policy, LoRA) and policy is not None:
            # KerasHub backbones rebuild their layers without adapters: put them
            # back (zero) so the saved adapter weights have somewhere to load.
            task.freeze(task.freeze_policy)
        return task


@keras.saving.register_keras_serializable(package="tfft")
class _LoRAState(keras.layers.Layer):
    """Saves a task's LoRA weights unmerged, and puts them back after loading.

    Keras saves a LoRA-enabled Dense layer with the adapters merged into its
    kernel and zeroes the adapters on load. This layer stores each adapted
    layer's base kernel and its two adapter matrices; Keras loads it after the
    task's graph layers (`tfft._compat` checks that order), so its values win.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True

    def save_own_variables(self, store):
        task = self._task()
        if task is None:
            return
        for index, layer in enumerate(lora_layers(task.backbone)):
            kernel = dense_kernel_variable(layer)
            store[f"{index}_kernel"] = keras.ops.convert_to_numpy(kernel)
            store[f"{index}_a"] = keras.ops.convert_to_numpy(layer.lora_kernel_a)
            store[f"{index}_b"] = keras.ops.convert_to_numpy(layer.lora_kernel_b)

    def load_own_variables(self, store):
        task = self._task()
        if task is None or store is None:
            return
        # Keras weight stores are not dicts: they iterate over nothing, keys() lists.
        saved = [key for key in store.keys() if key.endswith("_kernel")]  # noqa: SIM118
        if not saved:
            # A file written before this layer existed (a causal-LM task of tfft <= stop 31):
            # its kernels hold the merged weights and the adapters start again from zero.
            return
        layers = lora_layers(task.backbone)
        if len(saved) != len(layers):
            raise ValueError(
                f"The file holds LoRA weights for {len(saved)} layers but the task has "
                f"{len(layers)} LoRA layers; it was saved from a different model."
            )
        for index, layer in enumerate(layers):
            dense_kernel_variable(layer).assign(store[f"{index}_kernel"])
            layer.lora_kernel_a.assign(store[f"{index}_a"])
            layer.lora_kernel_b.assign(store[f"{index}_b"])

    def _task(self):
        ref = self.__dict__.get("_task_ref")
        return None if ref is None else ref()

    def call(self, inputs):
        return inputs


def _info_from_dict(data):
    data = dict(data)
    if isinstance(data.get("input_size"), list):
        data["input_size"] = tuple(data["input_size"])
    return BackboneInfo(**data)


def _as_policy(policy):
    if isinstance(policy, Mapping):
        return FreezePolicy.from_dict(dict(policy))
    return parse_freeze(policy)


def backbone_input_spec(backbone: keras.Model) -> Any:
    """The backbone model's symbolic inputs (a KerasTensor or a dict of them)."""
    spec = getattr(backbone, "input", None)
    if spec is None:
        raise ValueError(
            f"The backbone {backbone.name!r} has no defined inputs; load it as a functional "
            "keras.Model (tfft.load_backbone does)."
        )
    return spec


def _symbolic_inputs(backbone):
    spec = backbone_input_spec(backbone)
    if isinstance(spec, dict):
        return {k: keras.Input(shape=v.shape[1:], dtype=v.dtype, name=k) for k, v in spec.items()}
    return keras.Input(shape=spec.shape[1:], dtype=spec.dtype)


def _input_keys(backbone):
    spec = getattr(backbone, "input", None)
    return set(spec) if isinstance(spec, dict) else set()


def _x_spec(element_spec):
    if isinstance(element_spec, tuple):
        return element_spec[0]
    return element_spec


def _take(tree, order):
    return tf.nest.map_structure(lambda a: np.asarray(a)[order], _as_array_tree(tree))


def _as_array_tree(x):
    if isinstance(x, Mapping):
        return {k: np.asarray(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and x and isinstance(x[0], str):
        return np.asarray(x, dtype=object)
    return np.asarray(x)


def _step_needs_remapper(function, args) -> bool:
    """Whether the step `function` is about to run with `args` has work for the remapper.

    Traces the step (which the call then reuses) under the light options the
    call runs with; True when it cannot tell (Keras' own function, or a list
    of batches from `train_on_batch`).
    """
    traced = getattr(function, "traced", None)
    iterator = args[0] if args else None
    if traced is None or not isinstance(iterator, ITERATOR_TYPES):
        return True
    with graph_optimizer_light():
        return remapper_has_work(traced.get_concrete_function(iterator))


def _element_spec(x, y):
    """`(inputs, labels)` element spec for `build_for_training`, or None if unknown."""
    if isinstance(x, tf.data.Dataset):
        return x.element_spec
    if y is None or isinstance(y, (Mapping, list, tuple)):
        return None
    labels = np.asarray(y)
    if labels.dtype == object:
        return None
    return None, tf.TensorSpec((None, *labels.shape[1:]), tf.as_dtype(labels.dtype))


def _split_tail(x, y, sample_weight, fraction):
    """Keras' validation_split: the last `fraction` of the examples validates."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation_split must be in (0, 1). Received: {fraction!r}")
    x = _as_array_tree(x)
    n = len(next(iter(tf.nest.flatten(x))))
    cut = int(n * (1.0 - fraction))
    if cut in (0, n):
        raise ValueError(f"validation_split={fraction} leaves an empty split of {n} examples.")

    def head(v):
        return None if v is None else tf.nest.map_structure(lambda a: a[:cut], v)

    def tail(v):
        return None if v is None else tf.nest.map_structure(lambda a: a[cut:], v)

    y = None if y is None else np.asarray(y)
    sample_weight = None if sample_weight is None else np.asarray(sample_weight)
    validation = keras.utils.pack_x_y_sample_weight(tail(x), tail(y), tail(sample_weight))
    return (head(x), head(y), head(sample_weight)), validation


def _on_tpu_strategy(strategy) -> bool:
    return isinstance(strategy, (tf.distribute.TPUStrategy,
                                 tf.distribute.experimental.TPUStrategy))


def _training_on_cpu() -> bool:
    """No GPU or TPU is visible to TensorFlow."""
    return not (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
