"""EfficientNet-Lite0 (real ImageNet weights) segmenting the real-photo scenes, exported."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tfft.data.masks import segmentation_dataset
from tfft.data.synthetic_scenes import make_scenes
from tfft.evaluation.segmentation import evaluate_segmentation, plot_segmentation
from tfft.export.saved_model import encode_image, load_serving_outputs_in_fresh_process
from tfft.export.segmentation import export_segmentation, segmentation_serving_outputs
from tfft.models.segmentation import build_segmentation_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(scene_dir):
    """Lite0 at 128x128, frozen, 2 epochs on 24 scenes loaded from PNG files."""
    task = build_segmentation_model("offline:efficientnet_lite0", num_classes=4,
                                    class_names=["background", "0", "1", "2"])
    before = [np.array(w.numpy(), copy=True) for w in task.backbone.weights]
    data = segmentation_dataset(os.path.join(scene_dir, "train", "images"), num_classes=4,
                                batch_size=8, shuffle=True, augment=True)
    history = task.fit(data, epochs=3, shuffle=False, verbose=0)
    return task, before, history.history["loss"]


def test_lite0_trains_with_its_backbone_untouched(trained):
    task, before, losses = trained
    assert losses[-1] < losses[0], losses
    assert len(before) == len(task.backbone.weights) > 200
    assert all(np.array_equal(a, w.numpy())
               for a, w in zip(before, task.backbone.weights, strict=True))


def test_evaluation_and_picture(trained, tmp_path):
    task, _, _ = trained
    test = make_scenes(8, split="test")
    result = evaluate_segmentation(task, test.images, test.masks)
    assert set(result["per_class_iou"]) == {"background", "0", "1", "2"}
    assert 0.0 <= result["mean_iou"] <= 1.0
    assert result["per_class_iou"]["background"] > 0.5
    path = plot_segmentation(test.images, test.masks, task.predict_masks(test.images),
                             str(tmp_path / "masks.png"), 4, task.class_names)
    assert os.path.getsize(path) > 10_000


def test_export_agrees_in_a_fresh_process(trained, tmp_path):
    task, _, _ = trained
    test = make_scenes(3, split="test")
    # PNG at the model's size and a JPEG of another size: both decode inside the export.
    samples = [encode_image(test.images[0]), encode_image(test.images[1]),
               encode_image(np.repeat(np.repeat(test.images[2], 2, 0), 2, 1), "jpeg")]
    path = export_segmentation(task, str(tmp_path / "seg" / "1"))
    got = load_serving_outputs_in_fresh_process(path, samples)
    expected = segmentation_serving_outputs(task, samples)
    assert got["mask"].shape == (3, 128, 128) and got["mask"].dtype == np.int32
    assert np.array_equal(got["mask"], expected["mask"])
    # The export's masks are the in-memory model's on the same pixels.
    direct = task.predict_masks(test.images[:2])
    assert np.array_equal(got["mask"][:2], direct)
    assert os.path.exists(os.path.join(path, "tfft_segmentation.json"))


def test_failed_verification_writes_nothing(trained, tmp_path):
    task, _, _ = trained
    target = tmp_path / "seg" / "2"
    with pytest.raises(tf.errors.InvalidArgumentError):
        export_segmentation(task, str(target), verify_with=[b"not an image"])
    assert not target.exists()
