"""Gradual unfreezing: train the head first, then open the backbone block by block.

ULMFiT's schedule for Keras 3. `Gradual` (string form `"gradual"` or
`"gradual:N"`) freezes the backbone like `feature_extraction`; the Keras
callback `GradualUnfreezing` then opens one more block group every N epochs
(or every N steps), top block first, and finally the layers below the first
block (embeddings, stem).

Keras compiles the train step with the trainable variables of the moment, and
a Keras 3 optimizer refuses variables it was not built with. So before the
first step the callback builds the optimizer on every variable the schedule
will ever train (the other variables keep zero moments until they train);
at each change it flips the flags and asks Keras for a new train function
(`model.make_train_function(force=True)`: Keras' fit loop looks the function
up every step). Optimizer state of the variables already training is kept.

With one Keras Adam for all variables, a block opened at global step t starts
from zero moments but with step-t bias correction, so its first steps are off
(smaller early in training, up to ~3x larger late). Compile with
`tfft.layerwise_lr(model, lr, decay=1.0)` (or any decay) to give every block
its own optimizer clock; `tfft.fine_tune(..., unfreeze="gradual")` does.

`build_model(freeze="gradual")` compiles with the `"head"` preset (the
backbone starts frozen); pass `preset=` or compile yourself for the rate the
opened blocks should train at.

Example:

>>> model = tfft.build_model(backbone, num_classes=5, freeze="gradual", compile=False)
>>> model.compile(optimizer=tfft.layerwise_lr(model, 2e-5, decay=1.0), loss=...)
>>> model.fit(train, epochs=4, callbacks=[tfft.gradual_callback(model)])
"""

from __future__ import annotations

import dataclasses
import logging

import keras

from tfft._compat import optimizer_knows
from tfft.adapt.freeze import (
    FeatureExtraction,
    FreezePolicy,
    Full,
    TopK,
    apply_freeze,
    find_backbone_layer,
    parse_freeze,
    register_policy,
    trainable_summary,
)

logger = logging.getLogger("tfft.adapt.gradual")


@register_policy("gradual")
@dataclasses.dataclass(frozen=True)
class Gradual(FreezePolicy):
    """Backbone frozen at first, then unfrozen one block group at a time.

    With `every_epochs=N` the head trains alone for `start + N` epochs, then
    one more block group opens every `N` epochs, top block first. The groups
    are the backbone's blocks (`BackboneLayer.block_names`) and, last, the
    layers below them (embeddings or stem) when any weight there can train.

    Args:
        every_epochs: int. Epochs between two unfreezing steps. Defaults to 1.
        every_steps: int. Train steps between two unfreezing steps; replaces
            `every_epochs` when set. Defaults to None.
        start: int. Epochs (or steps) to wait before the schedule starts
            counting. Defaults to 0.
        max_blocks: int. Stop after this many block groups (the rest stays
            frozen). Defaults to None: everything ends up trainable.

    Example:

    >>> tfft.parse_freeze("gradual:2")
    Gradual(every_epochs=2, every_steps=None, start=0, max_blocks=None)
    """

    every_epochs: int = 1
    every_steps: int = None
    start: int = 0
    max_blocks: int = None

    def __post_init__(self):
        for field in ("every_epochs", "start"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"Gradual needs a non-negative int {field}. Received: {field}={value!r}"
                )
        if self.every_epochs < 1:
            raise ValueError(
                f"Gradual needs every_epochs >= 1. Received: every_epochs={self.every_epochs!r}"
            )
        for field in ("every_steps", "max_blocks"):
            value = getattr(self, field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(
                    f"Gradual needs {field}=None or a positive int. Received: {field}={value!r}"
                )

    def apply(self, model):
        stages = self.stages(model)
        if self.max_blocks is not None and self.max_blocks > len(stages) - 1:
            raise ValueError(
                f"Gradual asks for max_blocks={self.max_blocks} but the backbone has "
                f"{len(stages) - 1} block group(s) to unfreeze: use max_blocks <= "
                f"{len(stages) - 1} or None."
            )
        FeatureExtraction().apply(model)

    def stages(self, model):
        """The schedule's stages: `[(label, policy), ...]`, head only first.

        Stage `i` trains the top `i` block groups. Raises ValueError when the
        backbone declares no blocks.
        """
        backbone = find_backbone_layer(model)
        blocks = backbone.block_names
        if not blocks:
            raise ValueError(
                f"The backbone {backbone.backbone.name!r} declares no blocks, so gradual "
                "unfreezing has nothing to open step by step. Pass block_names when "
                "loading it (tfft.load_backbone(model, block_names=[...])), or use "
                "freeze='full' or 'regex:PATTERN'."
            )
        stages = [("head", FeatureExtraction())]
        for k in range(1, len(blocks) + 1):
            entry = blocks[len(blocks) - k]
            label = entry if isinstance(entry, str) else entry[0]
            stages.append((label, TopK(k)))
        if _adds_weights(model, TopK(len(blocks)), Full()):
            stages.append(("rest", Full()))
        if self.max_blocks is not None:
            stages = stages[: self.max_blocks + 1]
        return stages

    def stage_at(self, epoch=0, step=0):
        """Index of the stage that trains at `epoch` (or global `step`)."""
        clock, period = (step, self.every_steps) if self.every_steps else (epoch, self.every_epochs)
        return max(0, (clock - self.start) // period)

    def callback(self, model, verbose=1):
        """The `GradualUnfreezing` callback that runs this schedule on `model`."""
        return GradualUnfreezing(model, self, verbose=verbose)


def _adds_weights(model, smaller, larger):
    """True when `larger` trains more weights than `smaller` (flags left as `larger`)."""
    smaller.apply(model)
    before = trainable_summary(model)["trainable"]
    larger.apply(model)
    return trainable_summary(model)["trainable"] > before


def gradual_callback(model: keras.Model, verbose: int = 1) -> GradualUnfreezing:
    """Returns the unfreezing callback for a model built with `freeze="gradual..."`.

    Args:
        model: keras.Model. Built by `tfft.build_model(..., freeze=Gradual(...))`
            or frozen with `tfft.apply_freeze(model, "gradual")`.
        verbose: int. 1 prints each change; 0 only logs it.
    """
    policy = getattr(model, "freeze_policy", None)
    if not isinstance(policy, Gradual):
        raise ValueError(
            "gradual_callback needs a model frozen with a gradual policy (freeze='gradual' "
            f"or 'gradual:N'). Received a model with freeze policy {policy!r}."
        )
    return GradualUnfreezing(model, policy, verbose=verbose)


class GradualUnfreezing(keras.callbacks.Callback):
    """Keras callback that opens the backbone one block group at a time.

    Args:
        model: keras.Model. A compiled tfft model.
        policy: Gradual or str. The schedule (e.g. `"gradual:2"`).
        verbose: int. 1 prints each change; 0 only logs it (logger
            `"tfft.adapt.gradual"`).

    Attributes:
        changes: list of dicts, one per change: `epoch`, `step`, `stage`,
            `block` (the block group opened), `trainable` (parameter count).
    """

    def __init__(self, model, policy="gradual", verbose=1):
        super().__init__()
        policy = parse_freeze(policy)
        if not isinstance(policy, Gradual):
            raise TypeError(
                "GradualUnfreezing needs a Gradual policy (e.g. 'gradual:2'). "
                f"Received: {policy!r}"
            )
        self.policy = policy
        self.verbose = verbose
        self._target = model
        self._stages = policy.stages(model)
        self.stage = 0
        self.changes = []
        self._step = 0
        apply_freeze(model, policy)
        self._stage_to(0)

    def on_train_begin(self, logs=None):
        model = self._target
        if model.optimizer is None:
            raise ValueError("GradualUnfreezing needs a compiled model; compile it before fit.")
        self.prepare_optimizer()

    def on_epoch_begin(self, epoch, logs=None):
        if not self.policy.every_steps:
            self._move(self.policy.stage_at(epoch=epoch), epoch=epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.policy.every_steps:
            self._move(self.policy.stage_at(step=self._step), step=self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1

    def _move(self, index, epoch=None, step=None):
        index = min(index, len(self._stages) - 1)
        if index == self.stage:
            return
        self._stage_to(index)
        self._target.make_train_function(force=True)
        label = self._stages[index][0]
        trainable = trainable_summary(self._target)["trainable"]
        change = {"epoch": epoch, "step": step, "stage": index, "block": label,
                  "trainable": trainable}
        self.changes.append(change)
        when = f"epoch {epoch}" if step is None else f"step {step}"
        message = (f"GradualUnfreezing: {when}: unfroze {label!r} "
                   f"({index}/{len(self._stages) - 1}), {trainable:,} trainable parameters")
        logger.info(message)
        if self.verbose:
            print(message)

    def _stage_to(self, index):
        self._stages[index][1].apply(self._target)
        self.stage = index

    def prepare_optimizer(self):
        """Builds the model's optimizer on every variable the schedule will train.

        Runs at the start of `fit`; `tfft.training.build_for_training` calls it
        before, so the optimizer is not first built on the head alone.
        """
        model = self._target
        current = self.stage
        self._stage_to(len(self._stages) - 1)
        future = list(model.trainable_variables)
        self._stage_to(current)
        optimizer = model.optimizer
        if not optimizer.built:
            optimizer.build(future)
        elif not optimizer_knows(optimizer, future):
            if int(optimizer.iterations.numpy()) != 0:
                raise ValueError(
                    "The model's optimizer has already trained on other variables, so it "
                    "cannot take the blocks gradual unfreezing opens. Recompile the model "
                    "(tfft.compile_model) and create the callback again before fit."
                )
            fresh = optimizer.__class__.from_config(optimizer.get_config())
            fresh.build(future)
            model.optimizer = fresh
        model.make_train_function(force=True)
