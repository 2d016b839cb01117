"""Detection evaluation: COCO mAP@0.5 and mAP@[.5:.95] (pycocotools), and box pictures.

`detection_map` scores predicted boxes against the truth with the COCO
evaluation of `pycocotools` (the reference implementation: 101-point
interpolated average precision, per class, averaged over classes; mAP@[.5:.95]
averages IoU thresholds 0.50, 0.55 ... 0.95; up to 100 detections per image).
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np

from tfft.evaluation.plots import new_figure, save_figure


def _coco_eval():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as error:
        raise ImportError("COCO detection metrics need pycocotools: "
                          "`pip install pycocotools`.") from error
    return COCO, COCOeval


def _as_boxes(boxes, what, index):
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if len(boxes) else np.zeros((0, 4))
    if boxes.size and (np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1])):
        raise ValueError(f"{what} boxes of image {index} are not (x1, y1, x2, y2) with x2 >= x1 "
                         f"and y2 >= y1. Received: {boxes[:3].tolist()} ...")
    return boxes


def detection_map(true_boxes: list, true_classes: list, predicted_boxes: list,
                  predicted_classes: list, predicted_scores: list,
                  class_names: list[str] | None = None, num_classes: int | None = None) -> dict:
    """COCO-style mAP of predicted boxes against the truth, through pycocotools.

    Boxes are `(x1, y1, x2, y2)` pixels; classes are ids `0 .. num_classes-1`.
    A class with no true box has no AP (None) and is left out of the means, as
    pycocotools does.

    Args:
        true_boxes: list (one entry per image) of `(k, 4)` arrays.
        true_classes: list of `(k,)` int arrays.
        predicted_boxes: list of `(d, 4)` arrays.
        predicted_classes: list of `(d,)` int arrays.
        predicted_scores: list of `(d,)` float arrays.
        class_names: list of str. Names for `per_class_ap50`.
        num_classes: int. Defaults to `len(class_names)`, else the largest id + 1.

    Returns:
        `{"map50": float, "map50_95": float, "per_class_ap50": {name: float or
        None}, "images": int, "true_boxes": int, "detections": int}`.

    Example:

    >>> detection_map([[[0, 0, 10, 10]]], [[0]], [[[2, 0, 12, 10]]], [[0]], [[0.9]])["map50"]
    1.0
    """
    lengths = {len(true_boxes), len(true_classes), len(predicted_boxes), len(predicted_classes),
               len(predicted_scores)}
    if len(lengths) != 1:
        raise ValueError("detection_map needs one entry per image in each list. Received "
                         f"lengths {sorted(lengths)}.")
    if num_classes is None:
        ids = [int(c) for cs in (*true_classes, *predicted_classes) for c in np.ravel(cs)]
        num_classes = len(class_names) if class_names else max(ids, default=-1) + 1
    names = class_names or [f"class_{k}" for k in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes. "
                         f"Received: {names!r}")
    COCO, COCOeval = _coco_eval()
    # COCO category ids start at 1; tfft's class ids at 0.
    truth = {"images": [], "annotations": [],
             "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}
    detections = []
    for index, (boxes, classes, p_boxes, p_classes, p_scores) in enumerate(zip(
            true_boxes, true_classes, predicted_boxes, predicted_classes, predicted_scores,
            strict=True)):
        truth["images"].append({"id": index})
        boxes = _as_boxes(boxes, "True", index)
        for box, label in zip(boxes, np.ravel(classes).tolist(), strict=True):
            if not 0 <= label < num_classes:
                raise ValueError(f"True class {label} of image {index} is outside "
                                 f"[0, {num_classes}).")
            width, height = box[2] - box[0], box[3] - box[1]
            truth["annotations"].append({
                "id": len(truth["annotations"]) + 1, "image_id": index,
                "category_id": int(label) + 1, "bbox": [box[0], box[1], width, height],
                "area": float(width * height), "iscrowd": 0})
        p_boxes = _as_boxes(p_boxes, "Predicted", index)
        for box, label, score in zip(p_boxes, np.ravel(p_classes).tolist(),
                                     np.ravel(p_scores).tolist(), strict=True):
            detections.append({"image_id": index, "category_id": int(label) + 1,
                               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                               "score": float(score)})
    result = {"images": len(truth["images"]), "true_boxes": len(truth["annotations"]),
              "detections": len(detections)}
    present = {a["category_id"] - 1 for a in truth["annotations"]}
    if not detections or not present:
        # pycocotools cannot load an empty result list; nothing found scores 0.
        return {"map50": 0.0, "map50_95": 0.0,
                "per_class_ap50": {n: (0.0 if k in present else None)
                                   for k, n in enumerate(names)}, **result}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        ground_truth = COCO()
        ground_truth.dataset = truth
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [IoU threshold, recall point, class, area range, max detections];
    # area "all" and 100 detections, IoU 0.5 first.
    precision = evaluation.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(names):
        values = precision[0, :, k]
        per_class[name] = float(values[values > -1].mean()) if k in present else None
    return {"map50": float(evaluation.stats[1]), "map50_95": float(evaluation.stats[0]),
            "per_class_ap50": per_class, **result}


def evaluate_detection(model: Any, images: Any, true_boxes: list, true_classes: list,
                       batch_size: int = 16) -> dict:
    """Runs a `DetectionTask` on 0-255 images and scores it (`detection_map`).

    `true_boxes` are xyxy pixels of the images as given (the model's `image_size`).
    """
    detections = model.predict_detections(images, batch_size=batch_size)
    return detection_map(true_boxes, true_classes, [d["boxes"] for d in detections],
                         [d["classes"] for d in detections], [d["scores"] for d in detections],
                         class_names=model.class_names, num_classes=model.num_classes)


def plot_detections(images: Any, detections: list, path: str, class_names: list[str],
                    true_boxes: list | None = None, min_score: float = 0.3,
                    max_images: int = 6, columns: int = 3) -> str:
    """A PNG of images with their predicted boxes (solid, class and score) and true ones (dashed).

    Args:
        images: `(n, h, w, 3)` 0-255 images.
        detections: list of dicts with `"boxes"` (xyxy pixels), `"classes"`,
            `"scores"` (what `DetectionTask.predict_detections` returns).
        path: str. The PNG to write.
        class_names: list of str. Object class names.
        true_boxes: list of `(k, 4)` arrays or None. Drawn dashed, white.
        min_score: float. Predictions below it are not drawn. Defaults to 0.3.
        max_images: int. Defaults to 6.
        columns: int. Images per row. Defaults to 3.
    """
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    images = np.asarray(images)[:max_images]
    count = len(images)
    rows = max(1, -(-count // columns))
    fig = new_figure(2.6 * min(columns, count), 2.7 * rows + 0.3)
    axes = fig.subplots(rows, min(columns, count), squeeze=False)
    colours = colormaps["tab10"]
    for index, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if index >= count:
            ax.set_axis_off()
            continue
        ax.imshow(np.clip(images[index], 0, 255).astype(np.uint8))
        if true_boxes is not None:
            for x1, y1, x2, y2 in np.asarray(true_boxes[index]).reshape(-1, 4):
                ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                       edgecolor="white", linestyle="--", linewidth=1.0))
        found = detections[index]
        for (x1, y1, x2, y2), label, score in zip(
                np.asarray(found["boxes"]).reshape(-1, 4), np.ravel(found["classes"]),
                np.ravel(found["scores"]), strict=True):
            if score < min_score:
                continue
            colour = colours(int(label) % 10)
            ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False,
                                   edgecolor=colour, linewidth=1.5))
            ax.text(x1, max(y1 - 1.5, 0), f"{class_names[int(label)]} {score:.2f}", fontsize=6,
                    color="black", backgroundcolor=colour, va="bottom")
    fig.suptitle(f"predicted boxes (score >= {min_score:g}, solid)"
                 + ("; true boxes dashed" if true_boxes is not None else ""), fontsize=8)
    return save_figure(fig, path)


def detections_from_export(outputs: dict, index: int) -> dict:
    """One image's detections from a detection export's outputs (padding dropped).

    Args:
        outputs: dict of numpy arrays, what the export's `serving_default`
            returns (`boxes`, `classes`, `scores`, `num_detections`).
        index: int. The image.

    Returns:
        `{"boxes": (k, 4) float32, "classes": (k,) int32, "scores": (k,) float32}`,
        the form `plot_detections` and `detection_map` take.
    """
    count = int(np.asarray(outputs["num_detections"])[index])
    return {"boxes": np.asarray(outputs["boxes"][index][:count], np.float32),
            "classes": np.asarray(outputs["classes"][index][:count], np.int32),
            "scores": np.asarray(outputs["scores"][index][:count], np.float32)}
