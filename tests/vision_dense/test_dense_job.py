"""`tfft finetune --task object_detection|semantic_segmentation`, `tfft predict` on the exports."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfft.cli.main import _finetune_task, main
from tfft.data.boxes import read_boxes
from tfft.data.synthetic_scenes import write_scene_dataset
from tfft.evaluation.detection import detection_map, detections_from_export
from tfft.evaluation.segmentation import segmentation_iou
from tfft.export import export_saved_model
from tfft.jobs.dense_vision import DenseVisionJobConfig
from tfft.models.detection import build_detection_model
from tfft.models.segmentation import build_segmentation_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SIZE = 96


def _nothing_written(tmp_path):
    assert not os.path.exists(tmp_path / "run")
    assert not os.path.exists(tmp_path / "export")


def test_finetune_task_routing():
    assert _finetune_task(["finetune", "--task", "object_detection", "--data", "x"]) == (
        "object_detection")
    assert _finetune_task(["finetune", "--task=semantic_segmentation"]) == "semantic_segmentation"
    assert _finetune_task(["finetune", "--task", "causal_lm"]) == "causal_lm"
    assert _finetune_task(["finetune", "--task", "multiclass"]) is None
    assert _finetune_task(["evaluate", "--task", "object_detection"]) is None


@pytest.mark.parametrize("settings, message", [
    ({"task": "detection"}, "task: expected one of"),
    ({"image_size": "16x16"}, "image_size"),
    ({"image_size": "wide"}, "image_size"),
    ({"epochs": 0}, "epochs"),
    ({"class_names": "a,a"}, "class_names"),
    ({"mask_dir": "masks"}, "mask_dir"),
    ({"test_fraction": 0.0}, "test_fraction"),
    ({"unfreeze": "sometimes"}, "freeze policy"),
])
def test_config_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        DenseVisionJobConfig(**{"task": "object_detection", "data": "boxes.csv", **settings})


def test_bad_box_row_is_named_and_nothing_is_written(scene_dir, tmp_path, capsys):
    bad = tmp_path / "boxes.csv"
    train = os.path.join(scene_dir, "train")
    with open(os.path.join(train, "boxes.csv")) as f:
        lines = f.read().splitlines()
    lines = [lines[0]] + [f"{os.path.join(train, line)}" for line in lines[1:3]]
    lines.append(f"{os.path.join(train, 'images', 'missing.png')},digit_0,1,1,5,5")
    bad.write_text("\n".join(lines) + "\n")
    code = main(["finetune", "--task", "object_detection", "--data", str(bad),
                 "--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert code == 2
    assert "boxes.csv" in err and "row 4" in err and "missing.png" in err, err
    _nothing_written(tmp_path)


def test_missing_mask_is_named_and_nothing_is_written(scene_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "masks").mkdir()
    source = os.path.join(scene_dir, "train", "images")
    for name in sorted(os.listdir(source))[:3]:
        shutil.copy(os.path.join(source, name), images / name)
    shutil.copy(os.path.join(scene_dir, "train", "masks", sorted(os.listdir(source))[0]),
                tmp_path / "masks")
    code = main(["finetune", "--task", "semantic_segmentation", "--data", str(images),
                 "--run-dir", str(tmp_path / "run"), "--export-dir", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert code == 2
    assert sorted(os.listdir(source))[1].rsplit(".", 1)[0] in err, err
    _nothing_written(tmp_path)


def test_bad_flag_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", "object_detection", "--data", "b.csv", "--epochs", "0"])
    assert exit_info.value.code == 2
    assert "--epochs" in capsys.readouterr().err


def _encoded(images):
    return [tf.io.encode_png(np.asarray(image, np.uint8)).numpy() for image in images]


def test_export_saved_model_routes_dense_tasks(tmp_path, tiny_backbone):
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    detector = build_detection_model(tiny_backbone(), num_classes=3, image_size=(64, 64),
                                     class_names=["a", "b", "c"])
    path = export_saved_model(detector, str(tmp_path / "det"), verify=False)
    assert path == str(tmp_path / "det" / "1")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    outputs = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(_encoded(images))).items()}
    expected = detector.predict_detections(images)
    for i in range(2):
        found = detections_from_export(outputs, i)
        np.testing.assert_allclose(found["boxes"], expected[i]["boxes"], atol=1e-3)
    with pytest.raises(FileExistsError):
        export_saved_model(detector, str(tmp_path / "det"), version=1, verify=False)

    segmenter = build_segmentation_model(tiny_backbone(), num_classes=3, image_size=(64, 64))
    path = export_saved_model(segmenter, str(tmp_path / "seg"), verify=False)
    with open(os.path.join(path, "tfft_segmentation.json")) as f:
        assert json.load(f)["task"] == "semantic_segmentation"
    mask = tf.saved_model.load(path).signatures["serving_default"](
        image_bytes=tf.constant(_encoded(images)))["mask"].numpy()
    np.testing.assert_array_equal(mask, segmenter.predict_masks(images))


# The real-asset runs: EfficientNet-Lite0 at 96x96, 48 training and 16 test scenes.


@pytest.fixture(scope="module")
def small_scenes(tmp_path_factory):
    return write_scene_dataset(tmp_path_factory.mktemp("dense_job") / "scenes", num_train=48,
                               num_test=16, seed=0, image_size=(SIZE, SIZE))


def _run_cli(task, tmp_path, args):
    run_dir = tmp_path / task
    code = main(["finetune", "--task", task, "--image-size", f"{SIZE}x{SIZE}", "--epochs", "1",
                 "--batch-size", "16", "--run-dir", str(run_dir), "--export-dir",
                 str(run_dir / "export"), *args])
    assert code == 0
    with open(run_dir / "report.json") as f:
        return run_dir, json.load(f)


def _png_size(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as picture:
        return picture.size


def _serve(export_path, paths):
    serve = tf.saved_model.load(export_path).signatures["serving_default"]
    data = [tf.io.read_file(p).numpy() for p in paths]
    return {k: v.numpy() for k, v in serve(image_bytes=tf.constant(data)).items()}


@pytest.mark.slow
def test_detection_job_end_to_end(small_scenes, tmp_path, capsys):
    root = os.path.join(small_scenes, "train")
    test_file = os.path.join(small_scenes, "test", "coco.json")
    run_dir, report = _run_cli("object_detection", tmp_path, [
        "--data", os.path.join(root, "boxes.csv"), "--test-data", test_file])
    assert {"map50", "map50_95", "per_class_ap50"} <= set(report["test"])
    assert report["train_images"] == 48 and report["test_images"] == 16
    test = read_boxes(test_file, class_names=report["class_names"])
    outputs = _serve(report["export_path"], test.image_paths)
    found = [detections_from_export(outputs, i) for i in range(len(test))]
    scored = detection_map(test.boxes, test.classes, [d["boxes"] for d in found],
                           [d["classes"] for d in found], [d["scores"] for d in found],
                           class_names=report["class_names"])
    assert report["test"]["map50"] == pytest.approx(scored["map50"], abs=1e-3)
    assert report["test"]["map50_95"] == pytest.approx(scored["map50_95"], abs=1e-3)
    width, height = _png_size(run_dir / "detections.png")
    assert width > 300 and height > 150

    capsys.readouterr()
    assert main(["predict", "--model", report["export_path"], test.image_paths[0],
                 "--out", str(tmp_path / "pictures"), "--min-score", "0.1"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    keep = found[0]["scores"] >= 0.1
    np.testing.assert_allclose(np.reshape(row["boxes"], (-1, 4)), found[0]["boxes"][keep],
                               atol=1e-3)
    assert row["class_ids"] == found[0]["classes"][keep].tolist()
    stem = os.path.splitext(os.path.basename(test.image_paths[0]))[0]
    assert row["picture"] == str(tmp_path / "pictures" / f"{stem}_boxes.png")
    _png_size(row["picture"])


@pytest.mark.slow
def test_segmentation_job_end_to_end(small_scenes, tmp_path, capsys):
    run_dir, report = _run_cli("semantic_segmentation", tmp_path, [
        "--data", os.path.join(small_scenes, "train", "images"),
        "--test-data", os.path.join(small_scenes, "test", "images"),
        "--class-names", "background,digit_0,digit_1,digit_2"])
    assert {"mean_iou", "per_class_iou"} <= set(report["test"])
    assert set(report["test"]["per_class_iou"]) == {"background", "digit_0", "digit_1",
                                                    "digit_2"}
    image_dir = os.path.join(small_scenes, "test", "images")
    names = sorted(os.listdir(image_dir))
    paths = [os.path.join(image_dir, n) for n in names]
    masks = np.stack([np.asarray(Image.open(os.path.join(small_scenes, "test", "masks",
                                                          n.rsplit(".", 1)[0] + ".png")))
                      for n in names])
    outputs = _serve(report["export_path"], paths)
    scored = segmentation_iou(masks, outputs["mask"], 4, report["class_names"])
    assert report["test"]["mean_iou"] == pytest.approx(scored["mean_iou"], abs=1e-3)
    width, height = _png_size(run_dir / "masks.png")
    assert width > 300 and height > 150

    capsys.readouterr()
    assert main(["predict", "--model", report["export_path"], paths[0],
                 "--out", str(tmp_path / "pictures")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    counts = np.bincount(outputs["mask"][0].ravel(), minlength=4)
    assert row["pixels"] == dict(zip(report["class_names"], counts.tolist(), strict=True))
    assert _png_size(row["picture"])[0] > 100
