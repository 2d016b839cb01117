"""`DetectionHead`: per-anchor class logits and box deltas from a backbone's feature pyramid."""

import math

import keras

_GROUPS = 8


@keras.saving.register_keras_serializable(package="tfft")
class DetectionHead(keras.layers.Layer):
    """A light RetinaNet-style head: FPN merge, then shared class and box towers.

    The pyramid levels (a dict `{"P3": ..., "P5": ...}`, finest first by key)
    are projected to `filters` channels by 1x1 convolutions and merged top
    down (FPN: each coarser level upsampled, nearest, and added to the next
    finer one). Two towers of `num_convs` 3x3 convolutions + GroupNorm + ReLU
    (RetinaNet with GroupNorm, as KerasHub's `use_prediction_head_norm`), shared by
    every level, end in a 3x3 convolution giving `num_anchors * num_classes`
    class logits (bias set so every anchor starts at `prior_probability`, as
    in RetinaNet) and `num_anchors * 4` box deltas per location.

    Outputs are concatenated over the levels in key order, each level's
    locations row by row and each location's anchors in order: the order of
    `keras_hub.layers.AnchorGenerator`'s anchors.

    Args:
        num_classes: int. Object classes (no background class: an anchor
            matching nothing has every class at 0).
        num_anchors: int. Anchors per location.
        filters: int. Channels of the FPN and towers. Defaults to 64.
        num_convs: int. 3x3 convolutions per tower. Defaults to 2.
        prior_probability: float. Initial class probability. Defaults to 0.01.

    Returns:
        `{"box_deltas": (b, n, 4), "class_logits": (b, n, num_classes)}`,
        `n` anchors over all levels.

    Example:

    >>> head = DetectionHead(3, num_anchors=2, filters=8)
    >>> out = head({"P3": np.zeros((1, 8, 8, 4)), "P4": np.zeros((1, 4, 4, 4))})
    >>> out["class_logits"].shape
    (1, 160, 3)
    """

    def __init__(self, num_classes, num_anchors, filters=64, num_convs=2, prior_probability=0.01,
                 **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"A detection head needs num_classes >= 1 (object classes, no "
                             f"background). Received: num_classes={num_classes!r}")
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 1:
            raise ValueError(f"num_anchors must be a positive int. Received: {num_anchors!r}")
        if not 0.0 < float(prior_probability) < 1.0:
            raise ValueError("prior_probability must be in (0, 1). Received: "
                             f"{prior_probability!r}")
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.filters = int(filters)
        self.num_convs = int(num_convs)
        self.prior_probability = float(prior_probability)
        self.laterals = {}
        tower = {"kernel_initializer": keras.initializers.RandomNormal(stddev=0.01),
                 "padding": "same"}
        self.class_tower = [keras.layers.Conv2D(self.filters, 3, name=f"class_conv{k}", **tower)
                            for k in range(self.num_convs)]
        self.box_tower = [keras.layers.Conv2D(self.filters, 3, name=f"box_conv{k}", **tower)
                          for k in range(self.num_convs)]
        # GroupNorm, not BatchNorm: no moving statistics to lag behind a short
        # fine-tune, and the same statistics for every level of the shared tower.
        groups = math.gcd(self.filters, _GROUPS)
        self.class_norms = [keras.layers.GroupNormalization(groups, name=f"class_norm{k}")
                            for k in range(self.num_convs)]
        self.box_norms = [keras.layers.GroupNormalization(groups, name=f"box_norm{k}")
                          for k in range(self.num_convs)]
        prior = -math.log((1 - self.prior_probability) / self.prior_probability)
        self.class_output = keras.layers.Conv2D(
            num_anchors * num_classes, 3, name="class_logits",
            bias_initializer=keras.initializers.Constant(prior), **tower)
        self.box_output = keras.layers.Conv2D(num_anchors * 4, 3, name="box_deltas", **tower)

    def build(self, input_shape):
        if not isinstance(input_shape, dict) or not input_shape:
            raise ValueError(
                "DetectionHead takes a dict of pyramid features ({'P3': ..., 'P4': ...}). "
                f"Received input shape: {input_shape!r}"
            )
        for key in sorted(input_shape):
            lateral = keras.layers.Conv2D(self.filters, 1, name=f"lateral_{key}")
            lateral.build(input_shape[key])
            self.laterals[key] = lateral
        shape = (*input_shape[sorted(input_shape)[0]][:-1], self.filters)
        for layer in (*self.class_tower, *self.box_tower, *self.class_norms, *self.box_norms,
                      self.class_output, self.box_output):
            layer.build(shape)
        self.built = True

    def _merge(self, features):
        """FPN top-down path: one `filters`-wide map per level, finest first."""
        keys = sorted(features)
        merged = [self.laterals[keys[-1]](features[keys[-1]])]
        for key in reversed(keys[:-1]):
            finer = self.laterals[key](features[key])
            size = keras.ops.shape(finer)[1:3]
            merged.insert(0, finer + keras.ops.image.resize(merged[0], size,
                                                            interpolation="nearest"))
        return merged

    def call(self, features):
        boxes, logits = [], []
        for level in self._merge(features):
            batch = keras.ops.shape(level)[0]
            x = level
            for conv, norm in zip(self.class_tower, self.class_norms, strict=True):
                x = keras.ops.relu(norm(conv(x)))
            logits.append(keras.ops.reshape(self.class_output(x),
                                            (batch, -1, self.num_classes)))
            x = level
            for conv, norm in zip(self.box_tower, self.box_norms, strict=True):
                x = keras.ops.relu(norm(conv(x)))
            boxes.append(keras.ops.reshape(self.box_output(x), (batch, -1, 4)))
        return {"box_deltas": keras.ops.concatenate(boxes, axis=1),
                "class_logits": keras.ops.concatenate(logits, axis=1)}

    def compute_output_shape(self, input_shape):
        first = next(iter(input_shape.values()))
        count = sum(shape[1] * shape[2] * self.num_anchors for shape in input_shape.values())
        return {"box_deltas": (first[0], count, 4),
                "class_logits": (first[0], count, self.num_classes)}

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, num_anchors=self.num_anchors,
                      filters=self.filters, num_convs=self.num_convs,
                      prior_probability=self.prior_probability)
        return config
