"""Does an ImageNet backbone help semantic segmentation? Pretrained vs the same net from scratch.

The real-photo scenes of `tfft.data.synthetic_scenes` (MNIST-5k digits 0-2 on
scikit-image photos, 128x128, 4 mask classes with background) are written as
PNG images + PNG masks and read back by `tfft.data.masks.segmentation_dataset`
(with flips). Two models of the same architecture (the backbone's feature
pyramid + tfft's FPN `SegmentationHead`) train with the same recipe and
budget:

- pretrained: the offline ImageNet backbone (`--backbone`);
- scratch: the same backbone re-initialised at random (`keras.models.clone_model`).

Recipe for both: `--frozen-epochs` with the backbone frozen (feature
extraction, Adam 3e-3), then `--full-epochs` with everything training (Adam
`--full-lr`). Both are scored by mean IoU (keras.metrics.MeanIoU) on the fixed
test set. Prints one JSON object as the last line, keys
`segmentation_miou_pretrained` and `segmentation_miou_scratch`.

    .venv/bin/python benchmarks/segmentation.py [--backbone offline:efficientnet_lite0]
        [--train 480] [--test 160] [--frozen-epochs 2] [--full-epochs 3]
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tfft  # noqa: F401, I001  (sets the Keras backend first)
import keras

from tfft.backbones import Backbone, load_backbone
from tfft.data.masks import segmentation_dataset
from tfft.data.synthetic_scenes import make_scenes, write_scene_dataset
from tfft.evaluation.segmentation import evaluate_segmentation, plot_segmentation
from tfft.models.segmentation import build_segmentation_model, fit_two_stage

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def randomised(backbone: Backbone, seed: int) -> Backbone:
    """The same architecture with freshly initialised weights."""
    keras.utils.set_random_seed(seed)
    model = keras.models.clone_model(backbone.model)
    return Backbone(model, backbone.info, preprocessor=backbone.preprocessor,
                    block_names=backbone.block_names)


def train_and_score(backbone, args, train_dir, test):
    keras.utils.set_random_seed(args.seed)
    task = build_segmentation_model(backbone, num_classes=4, image_size=(args.size, args.size),
                                    learning_rate=3e-3,
                                    class_names=["background", "digit_0", "digit_1", "digit_2"])
    data = segmentation_dataset(train_dir, num_classes=4, image_size=(args.size, args.size),
                                batch_size=args.batch_size, shuffle=True, augment=True,
                                seed=args.seed)
    start = time.perf_counter()
    losses = fit_two_stage(task, data, args.frozen_epochs,
                           args.full_epochs, args.full_lr, unfreeze="full")
    seconds = time.perf_counter() - start
    result = evaluate_segmentation(task, test.images, test.masks)
    return task, {"mean_iou": round(result["mean_iou"], 4),
                  "per_class_iou": {k: None if v is None else round(v, 4)
                                    for k, v in result["per_class_iou"].items()},
                  "train_seconds": round(seconds, 1),
                  "losses": [round(v, 4) for v in losses]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="offline:efficientnet_lite0")
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frozen-epochs", type=int, default=2)
    parser.add_argument("--full-epochs", type=int, default=3)
    parser.add_argument("--full-lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", default=os.path.join(RESULTS, "segmentation_masks.png"))
    args = parser.parse_args()

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_scene_dataset(os.path.join(tmp, "scenes"), num_train=args.train,
                                   num_test=args.test, seed=args.seed,
                                   image_size=(args.size, args.size))
        train_dir = os.path.join(root, "train", "images")
        test = make_scenes(args.test, split="test", image_size=(args.size, args.size))
        pretrained = load_backbone(args.backbone, pooling=None)
        scratch = randomised(pretrained, args.seed)
        task, result_pretrained = train_and_score(pretrained, args, train_dir, test)
        shown = test.images[:6]
        plot_segmentation(shown, test.masks[:6], task.predict_masks(shown), args.figure, 4,
                          task.class_names)
        _, result_scratch = train_and_score(scratch, args, train_dir, test)
    line = {
        "benchmark": "segmentation",
        "backbone": args.backbone,
        "segmentation_miou_pretrained": result_pretrained["mean_iou"],
        "segmentation_miou_scratch": result_scratch["mean_iou"],
        "pretrained_wins": result_pretrained["mean_iou"] > result_scratch["mean_iou"],
        "pretrained": result_pretrained,
        "scratch": result_scratch,
        "settings": {"train": args.train, "test": args.test, "size": args.size,
                     "batch_size": args.batch_size, "frozen_epochs": args.frozen_epochs,
                     "full_epochs": args.full_epochs, "full_lr": args.full_lr,
                     "seed": args.seed, "cpus": os.cpu_count(),
                     "load_average_at_start": round(load, 2)},
        "figure": os.path.relpath(args.figure),
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
