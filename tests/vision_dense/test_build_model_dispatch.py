"""`tfft.build_model(..., task="semantic_segmentation")` builds a `SegmentationTask`."""

from tfft.models import build_model
from tfft.models.segmentation import SegmentationTask

TINY_SIZE = (64, 64)  # the tiny_backbone fixture's input size


def test_build_model_dispatches_the_task(tiny_backbone):
    task = build_model(tiny_backbone(), task="semantic_segmentation", num_classes=3,
                       image_size=TINY_SIZE, compile=False,
                       class_names=["background", "a", "b"])
    assert isinstance(task, SegmentationTask)
    assert task.num_classes == 3 and task.class_names == ["background", "a", "b"]
    assert task.freeze_policy.name == "feature_extraction"
