"""Segmentation evaluation: mean and per-class IoU (Keras metrics), and mask pictures."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from tfft.evaluation.plots import new_figure, save_figure


def segmentation_iou(true_masks: Any, predicted_masks: Any, num_classes: int,
                     class_names: list[str] | None = None) -> dict:
    """Mean IoU and IoU per class, by `keras.metrics.MeanIoU` and `keras.metrics.IoU`.

    A class absent from both the truth and the predictions has no IoU (None
    in `per_class_iou`) and is left out of the mean, as Keras does.

    Args:
        true_masks: `(n, h, w)` int class ids.
        predicted_masks: `(n, h, w)` int class ids.
        num_classes: int. Classes, background included.
        class_names: list of str. Names for `per_class_iou`'s keys.

    Returns:
        `{"mean_iou": float, "per_class_iou": {name: float or None}, "pixels": int}`.
    """
    true_masks = np.asarray(true_masks)
    predicted_masks = np.asarray(predicted_masks)
    if true_masks.shape != predicted_masks.shape:
        raise ValueError(
            f"True and predicted masks differ in shape: {true_masks.shape} vs "
            f"{predicted_masks.shape}."
        )
    names = class_names or [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes. "
                         f"Received: {names!r}")
    flat_true = true_masks.reshape(-1).astype(np.int32)
    flat_pred = predicted_masks.reshape(-1).astype(np.int32)
    mean = keras.metrics.MeanIoU(num_classes)
    mean.update_state(flat_true, flat_pred)
    present = set(np.unique(flat_true).tolist()) | set(np.unique(flat_pred).tolist())
    per_class = {}
    for k, name in enumerate(names):
        if k not in present:
            per_class[name] = None
            continue
        metric = keras.metrics.IoU(num_classes, target_class_ids=[k])
        metric.update_state(flat_true, flat_pred)
        per_class[name] = float(metric.result())
    return {"mean_iou": float(mean.result()), "per_class_iou": per_class,
            "pixels": int(flat_true.size)}


def evaluate_segmentation(model: keras.Model, images: Any, masks: Any,
                          batch_size: int = 16) -> dict:
    """Runs a `SegmentationTask` on 0-255 images and scores it against `masks`."""
    predicted = model.predict_masks(images, batch_size=batch_size)
    return segmentation_iou(masks, predicted, model.num_classes, model.class_names)


def plot_segmentation(images: Any, true_masks: Any, predicted_masks: Any, path: str,
                      num_classes: int, class_names: list[str] | None = None,
                      max_images: int = 6) -> str:
    """A PNG of each image beside its true and predicted masks (one row per image)."""
    from matplotlib import colormaps

    images = np.asarray(images)[:max_images]
    true_masks = np.asarray(true_masks)[:max_images]
    predicted_masks = np.asarray(predicted_masks)[:max_images]
    rows = len(images)
    fig = new_figure(6.6, 2.2 * rows + 0.4)
    axes = fig.subplots(rows, 3, squeeze=False)
    cmap = colormaps["tab10"].resampled(max(num_classes, 2))
    for row in range(rows):
        for col, (picture, title) in enumerate(
                ((images[row], "image"), (true_masks[row], "true mask"),
                 (predicted_masks[row], "predicted mask"))):
            ax = axes[row][col]
            if col == 0:
                ax.imshow(np.clip(picture, 0, 255).astype(np.uint8))
            else:
                ax.imshow(picture, cmap=cmap, vmin=0, vmax=max(num_classes - 1, 1),
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
    if class_names:
        fig.suptitle("  ".join(f"{k}: {name}" for k, name in enumerate(class_names)),
                     fontsize=8)
    return save_figure(fig, path)


def plot_mask_overlay(image: Any, mask: Any, path: str, class_names: list[str],
                      alpha: float = 0.5) -> str:
    """A PNG of an image with its predicted mask overlaid (background, id 0, left clear).

    The mask is resized (nearest) to the image's size when they differ.

    Args:
        image: `(h, w, 3)` 0-255 image.
        mask: `(mh, mw)` class ids.
        path: str. The PNG to write.
        class_names: list of str. One per class id.
        alpha: float. Opacity of the overlay. Defaults to 0.5.
    """
    from matplotlib import colormaps

    image = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        rows = np.arange(image.shape[0]) * mask.shape[0] // image.shape[0]
        cols = np.arange(image.shape[1]) * mask.shape[1] // image.shape[1]
        mask = mask[rows][:, cols]
    num_classes = max(len(class_names), 2)
    cmap = colormaps["tab10"].resampled(num_classes)
    fig = new_figure(3.2, 3.4)
    ax = fig.subplots()
    ax.imshow(image)
    ax.imshow(np.ma.masked_equal(mask, 0), cmap=cmap, vmin=0, vmax=num_classes - 1,
              alpha=alpha, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    present = [f"{k}: {class_names[k]}" for k in np.unique(mask) if 0 < k < len(class_names)]
    ax.set_title("predicted: " + (", ".join(present) or "background only"), fontsize=7)
    return save_figure(fig, path)
