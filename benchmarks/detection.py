"""Does an ImageNet backbone help dense tasks? Detection and segmentation, pretrained vs scratch.

The real-photo scenes of `tfft.data.synthetic_scenes` (MNIST-5k digits 0-2 on
scikit-image photos, 128x128) are written as PNG images + PNG masks +
boxes.csv + COCO JSON. For each task two models of the same architecture
train with the same recipe and budget:

- pretrained: the offline ImageNet backbone (`--backbone`);
- scratch: the same backbone re-initialised at random
  (`benchmarks/segmentation.py`'s `randomised`, `keras.models.clone_model`).

Detection (`tfft.models.detection`, boxes read from boxes.csv by
`tfft.data.boxes.detection_dataset` with crop/resize/flip augmentation):
`--frozen-epochs` with the backbone frozen (Adam 3e-3), then `--full-epochs`
with everything training (Adam `--full-lr`); scored by COCO mAP@0.5 and
mAP@[.5:.95] (pycocotools) on the fixed test set. Segmentation: exactly
`benchmarks/segmentation.py`'s `train_and_score` (imported, not copied) with
`--seg-frozen-epochs` and `--seg-full-epochs`, scored by mean IoU.

Prints one JSON object as the last line, keys `detection_map50_pretrained`,
`detection_map50_scratch`, `detection_map50_95_*`, `segmentation_miou_pretrained`,
`segmentation_miou_scratch` and the train seconds, and writes it to
`benchmarks/results/detection.json`, with the pretrained detector's boxes
drawn on test images in `benchmarks/results/detection_boxes.png`.

    .venv/bin/python benchmarks/detection.py [--backbone offline:efficientnet_lite0]
        [--train 480] [--test 160] [--frozen-epochs 4] [--full-epochs 4]
        [--seg-frozen-epochs 2] [--seg-full-epochs 2] [--skip-segmentation]
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: F401, I001  (sets the Keras backend first)
import keras

from tfft.backbones import load_backbone
from tfft.data.boxes import detection_dataset, read_boxes
from tfft.data.synthetic_scenes import make_scenes, write_scene_dataset
from tfft.evaluation.detection import evaluate_detection, plot_detections
from tfft.models.detection import build_detection_model
from tfft.models.segmentation import fit_two_stage

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")


def _segmentation_benchmark():
    """benchmarks/segmentation.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("segmentation_benchmark",
                                                  os.path.join(HERE, "segmentation.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_and_score_detection(backbone, args, train, test):
    keras.utils.set_random_seed(args.seed)
    size = (args.size, args.size)
    task = build_detection_model(backbone, num_classes=len(train.class_names), image_size=size,
                                 learning_rate=3e-3, class_names=train.class_names)
    data = detection_dataset(train, image_size=size, batch_size=args.batch_size, shuffle=True,
                             augment=True, seed=args.seed)
    start = time.perf_counter()
    losses = fit_two_stage(task, data, args.frozen_epochs, args.full_epochs,
                           args.full_lr, unfreeze="full")
    seconds = time.perf_counter() - start
    images, boxes = test.load(size)
    result = evaluate_detection(task, images, boxes, test.classes)
    return task, {"map50": round(result["map50"], 4), "map50_95": round(result["map50_95"], 4),
                  "per_class_ap50": {k: None if v is None else round(v, 4)
                                     for k, v in result["per_class_ap50"].items()},
                  "detections": result["detections"], "true_boxes": result["true_boxes"],
                  "train_seconds": round(seconds, 1),
                  "losses": [round(v, 4) for v in losses]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="offline:efficientnet_lite0")
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frozen-epochs", type=int, default=4)
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--seg-frozen-epochs", type=int, default=2)
    parser.add_argument("--seg-full-epochs", type=int, default=2)
    parser.add_argument("--skip-segmentation", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", default=os.path.join(RESULTS, "detection_boxes.png"))
    parser.add_argument("--output", default=os.path.join(RESULTS, "detection.json"))
    args = parser.parse_args()

    segmentation = _segmentation_benchmark()
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = write_scene_dataset(os.path.join(tmp, "scenes"), num_train=args.train,
                                   num_test=args.test, seed=args.seed,
                                   image_size=(args.size, args.size))
        train = read_boxes(os.path.join(root, "train", "boxes.csv"))
        test = read_boxes(os.path.join(root, "test", "coco.json"), class_names=train.class_names)
        # Fresh backbones per task: at the backbone's own input size the models
        # would share (and fine-tune) its weights.
        pretrained = load_backbone(args.backbone, pooling=None)
        scratch = segmentation.randomised(pretrained, args.seed)
        task, det_pretrained = train_and_score_detection(pretrained, args, train, test)
        images, boxes = test.load((args.size, args.size))
        plot_detections(images[:6], task.predict_detections(images[:6]), args.figure,
                        task.class_names, true_boxes=boxes[:6], min_score=0.3)
        _, det_scratch = train_and_score_detection(scratch, args, train, test)

        seg_pretrained = seg_scratch = None
        if not args.skip_segmentation:
            seg_args = argparse.Namespace(
                size=args.size, batch_size=args.batch_size, seed=args.seed,
                frozen_epochs=args.seg_frozen_epochs, full_epochs=args.seg_full_epochs,
                full_lr=args.full_lr)
            train_dir = os.path.join(root, "train", "images")
            seg_test = make_scenes(args.test, split="test", image_size=(args.size, args.size))
            pretrained = load_backbone(args.backbone, pooling=None)
            scratch = segmentation.randomised(pretrained, args.seed)
            _, seg_pretrained = segmentation.train_and_score(pretrained, seg_args, train_dir,
                                                             seg_test)
            _, seg_scratch = segmentation.train_and_score(scratch, seg_args, train_dir,
                                                          seg_test)
    line = {
        "benchmark": "detection_and_segmentation",
        "backbone": args.backbone,
        "detection_map50_pretrained": det_pretrained["map50"],
        "detection_map50_scratch": det_scratch["map50"],
        "detection_map50_95_pretrained": det_pretrained["map50_95"],
        "detection_map50_95_scratch": det_scratch["map50_95"],
        "detection_train_seconds_pretrained": det_pretrained["train_seconds"],
        "detection_train_seconds_scratch": det_scratch["train_seconds"],
        "segmentation_miou_pretrained": seg_pretrained and seg_pretrained["mean_iou"],
        "segmentation_miou_scratch": seg_scratch and seg_scratch["mean_iou"],
        "segmentation_train_seconds_pretrained": seg_pretrained and seg_pretrained[
            "train_seconds"],
        "segmentation_train_seconds_scratch": seg_scratch and seg_scratch["train_seconds"],
        "pretrained_wins_detection": det_pretrained["map50"] > det_scratch["map50"],
        "pretrained_wins_segmentation": None if seg_pretrained is None
        else seg_pretrained["mean_iou"] > seg_scratch["mean_iou"],
        "detection": {"pretrained": det_pretrained, "scratch": det_scratch},
        "segmentation": {"pretrained": seg_pretrained, "scratch": seg_scratch},
        "settings": {"train": args.train, "test": args.test, "size": args.size,
                     "batch_size": args.batch_size, "frozen_epochs": args.frozen_epochs,
                     "full_epochs": args.full_epochs, "full_lr": args.full_lr,
                     "seg_frozen_epochs": args.seg_frozen_epochs,
                     "seg_full_epochs": args.seg_full_epochs, "seed": args.seed,
                     "cpus": os.cpu_count(), "load_average_at_start": round(load, 2)},
        "wall_seconds": round(time.perf_counter() - started, 1),
        "figure": os.path.relpath(args.figure),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(json.dumps(line, indent=2) + "\n")
    print(json.dumps(line))


if __name__ == "__main__":
    main()
