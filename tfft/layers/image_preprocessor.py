"""`ImagePreprocessor`: raw 0-255 images of any size to a backbone's input, in TensorFlow ops."""

import keras
import tensorflow as tf

# Normalisations of `keras.applications.imagenet_utils.preprocess_input`, written
# as `x * scale + offset` after an optional RGB -> BGR flip, so one serialisable
# layer covers every family.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATIONS = {
    # keras.applications mode "tf": [-1, 1].
    "tf": {"scale": 1.0 / 127.5, "offset": -1.0, "channel_order": "rgb"},
    # mode "torch": [0, 1] then ImageNet mean / std.
    "torch": {
        "scale": [1.0 / (255.0 * s) for s in _IMAGENET_STD],
        "offset": [-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)],
        "channel_order": "rgb",
    },
    # mode "caffe": BGR, ImageNet BGR means subtracted, no scaling.
    "caffe": {
        "scale": 1.0,
        "offset": [-103.939, -116.779, -123.68],
        "channel_order": "bgr",
    },
    # [0, 1] (KerasCV backbones built without `include_rescaling`).
    "unit": {"scale": 1.0 / 255.0, "offset": 0.0, "channel_order": "rgb"},
    # The model normalises inside itself (EfficientNet, ConvNeXt, MobileNetV3).
    "none": {"scale": 1.0, "offset": 0.0, "channel_order": "rgb"},
}

_INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5", "gaussian")


@keras.saving.register_keras_serializable(package="tfft")
class ImagePreprocessor(keras.layers.Layer):
    """Resizes raw 0-255 images and normalises them for a backbone.

    Computes `resize(images) * scale + offset` (after flipping RGB to BGR when
    `channel_order="bgr"`) with TensorFlow ops, so it runs in `tf.data`
    pipelines, in Keras models and in exported SavedModels. Grayscale images
    (last axis 1) are repeated to RGB.

    Args:
        image_size: int or tuple of 2 ints. Output `(height, width)`.
        scale: float or list of 3 floats. Multiplier per channel.
            Defaults to `1.0`.
        offset: float or list of 3 floats. Added after scaling. Defaults to `0.0`.
        channel_order: str. `"rgb"` or `"bgr"` (Caffe-style models).
            Defaults to `"rgb"`.
        interpolation: str. `tf.image.resize` method. Defaults to `"bilinear"`.
        antialias: bool. Antialias when downsampling. Defaults to `True`.
        crop_to_aspect_ratio: bool. Centre-crop to the output aspect ratio
            before resizing instead of stretching. Defaults to `False`.

    Example:

    >>> pre = ImagePreprocessor((224, 224), **NORMALISATIONS["tf"])
    >>> pre(np.zeros((2, 100, 80, 3), "uint8")).shape
    TensorShape([2, 224, 224, 3])
    """

    def __init__(
        self,
        image_size,
        scale=1.0,
        offset=0.0,
        channel_order="rgb",
        interpolation="bilinear",
        antialias=True,
        crop_to_aspect_ratio=False,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.image_size = _as_size(image_size, "image_size")
        self.scale = _as_channel_values(scale, "scale")
        self.offset = _as_channel_values(offset, "offset")
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(
                "Unknown channel order. Expected 'rgb' or 'bgr'. "
                f"Received: channel_order={channel_order!r}"
            )
        if interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation. Expected one of {list(_INTERPOLATIONS)}. "
                f"Received: interpolation={interpolation!r}"
            )
        self.channel_order = channel_order
        self.interpolation = interpolation
        self.antialias = bool(antialias)
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)

    def call(self, images):
        x = tf.convert_to_tensor(images)
        if x.shape.rank not in (3, 4):
            raise ValueError(
                "ImagePreprocessor expects images shaped (height, width, channels) or "
                f"(batch, height, width, channels). Received: shape={x.shape}"
            )
        x = tf.cast(x, "float32")
        channels = x.shape[-1]
        if channels == 1:
            x = tf.image.grayscale_to_rgb(x)
        elif channels is not None and channels != 3:
            raise ValueError(
                "ImagePreprocessor expects RGB (3 channels) or grayscale (1 channel) "
                f"images. Received: shape={x.shape}"
            )
        if self.crop_to_aspect_ratio:
            x = self._centre_crop(x)
        x = tf.image.resize(
            x, self.image_size, method=self.interpolation, antialias=self.antialias
        )
        if self.channel_order == "bgr":
            x = x[..., ::-1]
        scale = tf.constant(self.scale, "float32")
        offset = tf.constant(self.offset, "float32")
        return x * scale + offset

    def _centre_crop(self, x):
        shape = tf.shape(x)
        height, width = shape[-3], shape[-2]
        target_h, target_w = self.image_size
        crop_h = tf.minimum(height, tf.cast(tf.round(
            tf.cast(width, "float32") * target_h / target_w), "int32"))
        crop_w = tf.minimum(width, tf.cast(tf.round(
            tf.cast(height, "float32") * target_w / target_h), "int32"))
        return tf.image.crop_to_bounding_box(
            x, (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-3]) + tuple(self.image_size) + (3,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_size": list(self.image_size),
                "scale": self.scale,
                "offset": self.offset,
                "channel_order": self.channel_order,
                "interpolation": self.interpolation,
                "antialias": self.antialias,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
            }
        )
        return config

    def describe(self):
        """One line saying what the layer does, for `BackboneInfo.preprocessing`."""
        norm = next(
            (
                mode
                for mode, values in NORMALISATIONS.items()
                if _as_channel_values(values["scale"], "scale") == self.scale
                and _as_channel_values(values["offset"], "offset") == self.offset
                and values["channel_order"] == self.channel_order
            ),
            f"x * {self.scale} + {self.offset}",
        )
        height, width = self.image_size
        return f"resize to {height}x{width} ({self.interpolation}), normalise: {norm}"


def _as_size(value, name):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a (height, width) pair. Received: {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(
            f"{name} must be an int or a (height, width) pair. Received: {name}={value!r}"
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(
            f"{name} must hold positive ints. Received: {name}={tuple(value)!r}"
        )
    return (int(value[0]), int(value[1]))


def _as_channel_values(value, name):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, (tuple, list)) and len(value) == 3:
        return [float(v) for v in value]
    raise TypeError(
        f"{name} must be a number or 3 numbers (one per channel). Received: {name}={value!r}"
    )


# Layer-name patterns that give a layer's block, tried in order. Layers that
# match none (stems, residual shortcuts, auto-named Inception convs) join the
# next named block; layers after the last block join it.
