"""`SegmentationHead`: per-pixel class logits from a backbone's feature pyramid."""

import keras


@keras.saving.register_keras_serializable(package="tfft")
class SegmentationHead(keras.layers.Layer):
    """A light feature-pyramid decoder: pyramid features to per-pixel class logits.

    Each pyramid level (a dict `{"P2": ..., "P5": ...}`, finest first by key)
    is projected to `filters` channels by a 1x1 convolution; from the
    coarsest level down, each is upsampled (bilinear) to the next finer one
    and added (FPN's top-down path). A 3x3 convolution with BatchNorm and ReLU
    refines the finest map, a 1x1 convolution gives `num_classes` logits, and
    they are resized (bilinear) to `output_size`.

    Args:
        num_classes: int. Mask classes, background included.
        output_size: (height, width). Size of the logits (the input image's).
        filters: int. Channels of the decoder. Defaults to 64.
        dropout: float. Dropout before the classifier. Defaults to 0.1.

    Example:

    >>> head = SegmentationHead(4, (64, 64), filters=16)
    >>> head({"P2": np.zeros((1, 16, 16, 8)), "P3": np.zeros((1, 8, 8, 8))}).shape
    (1, 64, 64, 4)
    """

    def __init__(self, num_classes, output_size, filters=64, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                "A segmentation head needs num_classes >= 2 (background included). "
                f"Received: num_classes={num_classes!r}"
            )
        self.num_classes = num_classes
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.filters = int(filters)
        self.dropout = float(dropout)
        self.laterals = {}
        self.refine = keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=False,
                                          name="refine")
        self.refine_bn = keras.layers.BatchNormalization(name="refine_bn")
        self.dropout_layer = keras.layers.Dropout(self.dropout)
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="classifier")

    def build(self, input_shape):
        if not isinstance(input_shape, dict) or not input_shape:
            raise ValueError(
                "SegmentationHead takes a dict of pyramid features ({'P2': ..., 'P3': ...}). "
                f"Received input shape: {input_shape!r}"
            )
        for key in sorted(input_shape):
            lateral = keras.layers.Conv2D(self.filters, 1, name=f"lateral_{key}")
            lateral.build(input_shape[key])
            self.laterals[key] = lateral
        finest = input_shape[sorted(input_shape)[0]]
        self.refine.build((*finest[:-1], self.filters))
        self.refine_bn.build((*finest[:-1], self.filters))
        self.classifier.build((*finest[:-1], self.filters))
        self.built = True

    def call(self, features, training=None):
        keys = sorted(features)
        merged = self.laterals[keys[-1]](features[keys[-1]])
        for key in reversed(keys[:-1]):
            finer = self.laterals[key](features[key])
            size = keras.ops.shape(finer)[1:3]
            merged = finer + keras.ops.image.resize(merged, size, interpolation="bilinear")
        x = keras.ops.relu(self.refine_bn(self.refine(merged), training=training))
        logits = self.classifier(self.dropout_layer(x, training=training))
        return keras.ops.image.resize(logits, self.output_size, interpolation="bilinear")

    def compute_output_shape(self, input_shape):
        first = next(iter(input_shape.values()))
        return (first[0], *self.output_size, self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, output_size=list(self.output_size),
                      filters=self.filters, dropout=self.dropout)
        return config
