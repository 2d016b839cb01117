"""`tfft evaluate --explain N --slice-by COLUMN`: files, numbers and messages."""

import argparse
import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.metrics import accuracy_score, f1_score

import tfft
from tfft.evaluation import calibration_report, cli, top_losses

CLASSES = ["sport", "business"]
ROWS = [
    ("the team won the match", "sport", "north"), ("a late win for the team", "sport", "north"),
    ("shares rose at the bank", "business", "north"), ("bank shares fell", "business", "south"),
    ("the match was dull", "sport", "south"), ("team shares news", "business", "south"),
    ("bank win", "sport", "south"), ("nothing at all here", "business", "north"),
]


@pytest.fixture(scope="module")
def export_and_csv(tmp_path_factory, keyword_export):
    root = tmp_path_factory.mktemp("interpretation")
    path = keyword_export(str(root / "keywords" / "1"), ("match|team|win", "shares|bank"),
                          {"class_names": CLASSES, "task": "multiclass"}, scale=1.5)
    csv = root / "news.csv"
    pd.DataFrame(ROWS, columns=["text", "label", "region"]).to_csv(csv, index=False)
    return path, str(csv)


def _run(argv):
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def _probabilities(path, texts):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return serve(inputs=tf.constant(texts))["probabilities"].numpy().astype(np.float64)


def test_explain_and_slice_by_column_write_it_all(export_and_csv, tmp_path, capsys):
    path, csv = export_and_csv
    out = tmp_path / "run"
    code = _run(["--model", path, "--data", csv, "--split", "all", "--out", str(out),
                 "--explain", "2", "--slice-by", "region"])
    printed = capsys.readouterr().out
    assert code == 0
    texts = [r[0] for r in ROWS]
    y = np.array([CLASSES.index(r[1]) for r in ROWS])
    probs = _probabilities(path, texts)
    pred = probs.argmax(axis=1)
    with open(out / "report.json") as f:
        report = json.load(f)
    # Calibration and top losses from the export's own probabilities.
    assert report["calibration"]["ece"] == pytest.approx(calibration_report(y, probs).ece)
    expected = top_losses(y, probs, k=2, class_names=CLASSES)
    assert [r["index"] for r in report["top_losses"]] == [r["index"] for r in expected]
    wrong = {(CLASSES[a], CLASSES[b]) for a, b in zip(y, pred, strict=True) if a != b}
    assert {(p["true"], p["predicted"]) for p in report["most_confused"]} == wrong
    # Occlusion attributions of the top losses: the score drop without each word.
    with open(out / "top_losses.json") as f:
        explained = json.load(f)
    assert explained["method"] == "occlusion"
    for row, example in zip(report["top_losses"], explained["examples"], strict=True):
        words = texts[row["index"]].split()
        target = CLASSES.index(row["predicted"])
        base = probs[row["index"], target]
        without = _probabilities(path, [" ".join(words[:j] + words[j + 1:])
                                        for j in range(len(words))])[:, target]
        np.testing.assert_allclose(example["word_attributions"], base - without, atol=1e-6)
    # Slices equal scikit-learn on each region's rows.
    regions = np.array([r[2] for r in ROWS])
    with open(out / "slices.json") as f:
        slices = json.load(f)
    for row in slices["slices"]:
        keep = regions == row["slice"]
        assert row["accuracy"] == accuracy_score(y[keep], pred[keep])
        assert row["macro_f1"] == f1_score(y[keep], pred[keep], average="macro",
                                           zero_division=0)
    assert report["slices"] == slices
    assert sorted(os.listdir(out)) == [
        "confusion_matrix.png", "per_class_f1.png", "reliability_diagram.png", "report.json",
        "slices.json", "slices.png", "top_losses.json", "top_losses.png"]
    assert "Metrics by region" in printed
    for name in ("slices.json", "top_losses.png", "reliability_diagram.png"):
        assert str(out / name) in printed


def test_slice_by_length_on_a_test_split_and_bad_flags(export_and_csv, tmp_path, capsys):
    path, csv = export_and_csv
    out = tmp_path / "length"
    assert _run(["--model", path, "--data", csv, "--split", "all", "--out", str(out),
                 "--slice-by", "length", "--no-plots"]) == 0
    with open(out / "slices.json") as f:
        assert sum(s["support"] for s in json.load(f)["slices"]) == len(ROWS)
    capsys.readouterr()
    for flags, message in (
        (["--slice-by", "brightness"], "does not apply to texts"),
        (["--slice-by", "county"], "no column 'county'"),
        (["--explain", "0"], "--explain must be >= 1"),
        (["--explain-method", "integrated_gradients", "--explain", "1"], "--keras-model"),
        (["--keras-model", str(tmp_path / "none.keras"), "--explain", "1"], ".keras file"),
    ):
        code = _run(["--model", path, "--data", csv, "--split", "all", "--out",
                     str(tmp_path / "bad"), *flags])
        assert code == 2, flags
        assert message in capsys.readouterr().err, flags


def test_keras_source_gives_integrated_gradients(new_tiny_text_backbone, tmp_path, capsys):
    task = tfft.build_model(new_tiny_text_backbone(), task="multiclass", num_classes=2,
                            class_names=CLASSES)
    source = str(tmp_path / "task.keras")
    task.save(source)
    export = tfft.export_saved_model(task, str(tmp_path / "saved" / "tiny"), verify=False)
    csv = tmp_path / "news.csv"
    pd.DataFrame(ROWS, columns=["text", "label", "region"]).to_csv(csv, index=False)
    out = tmp_path / "run"
    code = _run(["--model", export, "--data", str(csv), "--split", "all", "--out", str(out),
                 "--explain", "3", "--keras-model", source, "--explain-steps", "16",
                 "--no-plots"])
    assert code == 0, capsys.readouterr().err
    with open(out / "top_losses.json") as f:
        explained = json.load(f)
    assert explained["method"] == "integrated_gradients"
    for example in explained["examples"]:
        delta = example["score"] - example["baseline_score"]
        assert sum(example["token_attributions"]) == pytest.approx(delta, rel=0.05, abs=1e-6)
    # Another model's .keras is refused: it does not give the export's outputs.
    other = tfft.build_model(new_tiny_text_backbone(), task="multiclass",
                             num_classes=2, class_names=CLASSES)
    kernel, bias = other.head.get_weights()
    other.head.set_weights([kernel, bias + np.array([2.0, -2.0], bias.dtype)])
    other.save(str(tmp_path / "other.keras"))
    capsys.readouterr()
    code = _run(["--model", export, "--data", str(csv), "--split", "all", "--out", str(out),
                 "--explain", "3", "--keras-model", str(tmp_path / "other.keras")])
    assert code == 2 and "not the export's source" in capsys.readouterr().err


def test_image_export_explained_by_occlusion_and_by_grad_cam(tiny_cnn, tmp_path, capsys):
    backbone = tfft.load_backbone(
        tiny_cnn, preprocessor=tfft.ImagePreprocessor((32, 32), scale=1 / 127.5, offset=-1.0))
    task = tfft.build_model(backbone, task="multiclass", num_classes=2,
                            class_names=["dark", "light"])
    source = str(tmp_path / "task.keras")
    task.save(source)
    export = tfft.export_saved_model(task, str(tmp_path / "saved" / "tiny"), verify=False)
    rng = np.random.default_rng(0)
    images = {}
    for c, name in enumerate(["dark", "light"]):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            image = (rng.integers(0, 120, (36, 40, 3)) + 120 * c).astype(np.uint8)
            (tmp_path / "photos" / name / f"{i}.png").write_bytes(
                tf.io.encode_png(image).numpy())
            images[(name, i)] = image
    for extra, method in (([], "occlusion"), (["--keras-model", source], "grad_cam")):
        out = tmp_path / method
        code = _run(["--model", export, "--data", str(tmp_path / "photos"), "--split", "all",
                     "--explain", "2", "--slice-by", "brightness", "--out", str(out), *extra])
        assert code == 0, capsys.readouterr().err
        with open(out / "report.json") as f:
            report = json.load(f)
        with open(out / "top_losses.json") as f:
            assert json.load(f)["method"] == method
        with np.load(out / "top_losses.npz") as heatmaps:
            assert sorted(heatmaps.files) == sorted(
                f"heatmap_{row['index']}" for row in report["top_losses"])
            assert all(heatmaps[k].shape == (36, 40) for k in heatmaps.files)
        slices = report["slices"]["slices"]
        assert sum(s["support"] for s in slices) == 12
        assert len(slices) == 4  # brightness quartiles of 12 distinct means
