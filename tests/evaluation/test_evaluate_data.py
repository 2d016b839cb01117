"""`tfft evaluate --data SOURCE` on every source kind and task (issue 24, items 4 and 5)."""

import argparse
import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn import metrics as skm

import tfft
from tfft.evaluation import cli

TOPICS = {"animals": "cat|dog|bird", "food": "bread|soup|cheese", "sport": "match|goal|team"}
ROWS = [("the cat and a bird", "animals"), ("my dog", "animals"), ("hot soup", "food"),
        ("bread and cheese", "food"), ("the team won the match", "sport"),
        ("a late goal", "sport"), ("the dog ate the cheese", "food"), ("team soup", "sport")]


def _scores(path, texts):
    serve = tf.saved_model.load(path).signatures["serving_default"]
    return serve(inputs=tf.constant(list(texts)))["probabilities"].numpy()


@pytest.fixture(scope="module")
def topic_export(tmp_path_factory, keyword_export):
    path = str(tmp_path_factory.mktemp("exports") / "topics" / "1")
    return keyword_export(path, TOPICS.values(),
                          {"class_names": list(TOPICS), "task": "multiclass"}, shift=-1.0)


def _run(argv):
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_jsonl_file_scores_like_the_model(topic_export, tmp_path, capsys):
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"review": t, "topic": y}) + "\n" for t, y in ROWS))
    out = tmp_path / "eval"
    code = _run(["--model", topic_export, "--data", str(path), "--text-column", "review",
                 "--label-column", "topic", "--split", "all", "--no-plots", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    truth = [list(TOPICS).index(y) for _, y in ROWS]
    pred = _scores(topic_export, [t for t, _ in ROWS]).argmax(1)
    metrics = _report(out)["metrics"]
    assert metrics["confusion_matrix"] == skm.confusion_matrix(truth, pred).tolist()
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(truth, pred))


def test_given_test_file_is_scored_and_split_all_refused(topic_export, tmp_path, capsys):
    train, test = tmp_path / "train.csv", tmp_path / "test.jsonl"
    pd.DataFrame(ROWS, columns=["text", "label"]).to_csv(train, index=False)
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS[:3]))
    out = tmp_path / "eval"
    argv = ["--model", topic_export, "--data", str(train), "--test-data", str(test),
            "--no-plots", "--out", str(out)]
    assert _run(argv) == 0
    # The 3 rows of the test file, not a stratified cut of the 8 training rows.
    assert _report(out)["metrics"]["num_examples"] == 3
    assert "test split of" in capsys.readouterr().out
    assert _run([*argv[:-2], "--split", "all", "--out", str(tmp_path / "all")]) == 2
    assert "--split all scores one source" in capsys.readouterr().err
    assert _run([*argv[:-2], "--split", "val", "--out", str(tmp_path / "val")]) == 2
    assert "--split val is not among the given splits ['test', 'train']" in (
        capsys.readouterr().err)
    assert not (tmp_path / "all").exists() and not (tmp_path / "val").exists()


def test_data_section_of_the_metadata_is_the_default_data(tmp_path, capsys, keyword_export):
    """An export whose tfft_metadata.json holds `data` (DataSpec.to_dict()) and `split` is
    scored on its own test split by `tfft evaluate --model EXPORT` alone."""
    from tfft.data.user_data import DataSpec, split_indices

    rows = ROWS * 3
    path = tmp_path / "topics.jsonl"
    path.write_text("".join(json.dumps({"review": t, "topic": y}) + "\n" for t, y in rows))
    spec = DataSpec(str(path), text_column="review", label_column="topic")
    split = {"seed": 1, "val_fraction": 0.2, "test_fraction": 0.3}
    # Beside the DataSpec fields, the job's summary of its data (ignored here).
    data_info = {**spec.to_dict(), "name": "topics", "modality": "text",
                 "class_names": list(TOPICS), "sizes": {"train": 12}, "skipped": 0}
    model = keyword_export(str(tmp_path / "m" / "1"), TOPICS.values(), {
        "class_names": list(TOPICS), "task": "multiclass", "data": data_info,
        "split": split}, shift=-1.0)
    out = tmp_path / "eval"
    assert _run(["--model", model, "--no-plots", "--out", str(out)]) == 0
    assert f"test split of {path}" in capsys.readouterr().out
    labels = np.array([list(TOPICS).index(y) for _, y in rows])
    _, _, test_idx = split_indices(labels, "multiclass", 0.2, 0.3, seed=1)
    metrics = _report(out)["metrics"]
    assert metrics["num_examples"] == len(test_idx)
    pred = _scores(model, [rows[i][0] for i in test_idx]).argmax(1)
    assert metrics["confusion_matrix"] == skm.confusion_matrix(labels[test_idx], pred).tolist()


def test_regression_csv_reports_mae_rmse_r2(tmp_path, capsys):
    class Length(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs):
            return {"value": tf.cast(tf.strings.length(inputs), tf.float32)[:, None]}

    module = Length()
    model = str(tmp_path / "length" / "1")
    tf.saved_model.save(module, model, signatures={"serving_default": module.serve})
    with open(os.path.join(model, cli.METADATA_FILE), "w") as f:
        json.dump({"task": "regression"}, f)
    texts = [t for t, _ in ROWS]
    targets = [len(t) + (1.5 if i % 2 else -0.5) for i, t in enumerate(texts)]
    path = tmp_path / "lengths.csv"
    pd.DataFrame({"text": texts, "label": targets}).to_csv(path, index=False)
    out = tmp_path / "eval"
    code = _run(["--model", model, "--data", str(path), "--split", "all", "--no-plots",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = _report(out)
    predicted = [len(t) for t in texts]
    assert report["task"] == "regression"
    assert report["metrics"]["mae"] == pytest.approx(skm.mean_absolute_error(targets, predicted))
    assert report["metrics"]["r2"] == pytest.approx(skm.r2_score(targets, predicted), rel=1e-5)
    # A word among the targets names its row; nothing is written.
    pd.DataFrame({"text": texts, "label": ["long", *targets[1:]]}).to_csv(path, index=False)
    assert _run(["--model", model, "--data", str(path), "--split", "all",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "Target at row 0 of CSV file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_regression_test_split_rebuilt_from_the_metadata(tmp_path, capsys):
    from tfft.data.user_data import split_indices

    class Length(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs):
            return {"value": tf.cast(tf.strings.length(inputs), tf.float32)}

    module = Length()
    model = str(tmp_path / "length" / "1")
    tf.saved_model.save(module, model, signatures={"serving_default": module.serve})
    split = {"seed": 4, "val_fraction": 0.2, "test_fraction": 0.25}
    with open(os.path.join(model, cli.METADATA_FILE), "w") as f:
        json.dump({"task": "regression", "split": split}, f)
    texts = ["x" * (i + 1) for i in range(20)]
    targets = np.arange(20, dtype=float) * 3.0     # length * 3 - 3: errors grow with i
    path = tmp_path / "lengths.csv"
    pd.DataFrame({"text": texts, "label": targets}).to_csv(path, index=False)
    out = tmp_path / "eval"
    assert _run(["--model", model, "--data", str(path), "--no-plots", "--out", str(out)]) == 0
    capsys.readouterr()
    _, _, test_idx = split_indices(targets, "regression", 0.2, 0.25, seed=4)
    metrics = _report(out)["metrics"]
    assert metrics["num_examples"] == len(test_idx) == 5
    predicted = np.array([len(texts[i]) for i in test_idx])
    assert metrics["mae"] == pytest.approx(np.abs(targets[test_idx] - predicted).mean())


def test_multilabel_columns_follow_the_models_classes(tmp_path, capsys, keyword_export):
    topics = {"sport": "match|goal|team", "animals": "cat|dog|bird", "food": "soup|cheese"}
    model = keyword_export(str(tmp_path / "tags" / "1"), topics.values(),
                           {"class_names": list(topics), "task": "multilabel"},
                           shift=-1.0, activation=tf.nn.sigmoid)
    rows = [("the cat ate soup", "animals;food"), ("team match", "sport"),
            ("dog and goal", "animals;sport"), ("cheese", "food"), ("bird", "animals")]
    path = tmp_path / "tags.csv"
    pd.DataFrame(rows, columns=["text", "tags"]).to_csv(path, index=False)
    out = tmp_path / "eval"
    code = _run(["--model", model, "--data", str(path), "--label-column", "tags",
                 "--label-separator", ";", "--split", "all", "--no-plots", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    truth = np.array([[int(name in tags.split(";")) for name in topics] for _, tags in rows])
    pred = (_scores(model, [t for t, _ in rows]) >= 0.5).astype(int)
    report = _report(out)
    assert report["class_names"] == list(topics)
    f1 = skm.f1_score(truth, pred, average=None)
    assert [report["metrics"]["per_class"][n]["f1"] for n in topics] == pytest.approx(f1)
    assert report["metrics"]["macro_f1"] == pytest.approx(f1.mean())


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    """A small image export (tfft.export_saved_model) and a PNG class-folder test set."""
    import keras

    from tfft.data import load_digits
    from tfft.export import export_saved_model

    data = load_digits()
    keep = np.flatnonzero(data.y < 3)
    x = np.repeat(data.x[keep][..., None], 3, axis=-1)
    y = data.y[keep]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(x.astype("float32"), y, epochs=3, batch_size=64, verbose=0)
    root = tmp_path_factory.mktemp("digits")
    path = export_saved_model(model, str(root / "digits"), class_names=["0", "1", "2"],
                              modality="image", image_size=(8, 8), verify=False)
    folder = root / "pngs"
    rows = np.random.default_rng(0).choice(len(y), 30, replace=False)
    for i in rows:
        (folder / str(y[i])).mkdir(parents=True, exist_ok=True)
        (folder / str(y[i]) / f"{i:04d}.png").write_bytes(tf.io.encode_png(x[i]).numpy())
    # The folder order: classes sorted, files sorted by name, as tfft.data.load reads them.
    order = sorted(rows, key=lambda i: (y[i], i))
    return path, folder, model, x[order], y[order]


def test_image_folder_is_fed_to_the_image_export(digits_export, tmp_path, capsys):
    path, folder, model, images, labels = digits_export
    out = tmp_path / "eval"
    code = _run(["--model", path, "--data", str(folder), "--split", "all", "--no-plots",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    pred = model.predict(images.astype("float32"), verbose=0).argmax(1)
    metrics = _report(out)["metrics"]
    assert metrics["num_examples"] == 30
    assert metrics["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()


def test_unreadable_image_named_or_skipped_and_counted(digits_export, tmp_path, capsys):
    import shutil

    path, folder, _, _, _ = digits_export
    copy = tmp_path / "pngs"
    shutil.copytree(folder, copy)
    broken = copy / "1" / "broken.png"
    broken.write_bytes(b"\x89PNG but no image")
    argv = ["--model", path, "--data", str(copy), "--split", "all", "--no-plots"]
    assert _run([*argv, "--out", str(tmp_path / "raise")]) == 2
    err = capsys.readouterr().err
    assert f"{broken} is unreadable or corrupt" in err and "--on-error 'skip'" in err
    assert not (tmp_path / "raise").exists()
    assert _run([*argv, "--on-error", "skip", "--out", str(tmp_path / "skip")]) == 0
    assert f"skipped 1 bad record(s) of {copy}" in capsys.readouterr().out
    assert _report(tmp_path / "skip")["metrics"]["num_examples"] == 30


@pytest.mark.parametrize("case", ["missing_column", "empty", "outside_model_classes",
                                  "outside_class_names", "bad_image_size"])
def test_bad_input_exits_2_with_a_clear_message(case, topic_export, tmp_path, capsys):
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": t, "label": y}) + "\n" for t, y in ROWS))
    folder = tmp_path / "docs"
    for name in ("animals", "plants"):
        (folder / name).mkdir(parents=True)
        (folder / name / "a.txt").write_text("the cat")
    (tmp_path / "empty.jsonl").write_text("")
    argv, message = {
        "missing_column": (["--data", str(jsonl)],
                           r"'text' \(--text-column\) is not in JSONL file .*"
                           r"Available columns: \['sentence', 'label'\]"),
        "empty": (["--data", str(tmp_path / "empty.jsonl")], "empty.jsonl is empty"),
        "outside_model_classes": (["--data", str(folder)],
                                  r"labels \['plants'\] are not among the model's classes"),
        "outside_class_names": (["--data", str(jsonl), "--text-column", "sentence",
                                 "--class-names", "animals,food"],
                                r"Label 'sport' at row 4 is not one of the declared classes"),
        "bad_image_size": (["--data", str(folder), "--image-size", "0x3"], None),
    }[case]
    out = tmp_path / "out"
    if message is None:
        with pytest.raises(SystemExit) as info:
            _run(["--model", topic_export, *argv, "--out", str(out)])
        assert info.value.code == 2 and "HEIGHTxWIDTH" in capsys.readouterr().err
    else:
        assert _run(["--model", topic_export, *argv, "--split", "all", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tfft evaluate: error:") and re.search(message, err), err
    assert not out.exists()


@pytest.mark.slow
def test_lfw_png_folder_scored_by_an_efficientnet_lite0_export(lfw_png_job, tmp_path, capsys):
    """Issue 24 item 4 on real data: LFW faces vs not, written as PNG class folders, scored
    through `tfft evaluate --data DIR` by an export of an EfficientNet-Lite0 classifier.

    The export is the one of the LFW job (`lfw_png_job` in tests/conftest.py, shared with
    tests/jobs/test_own_data_real.py); the folder scored here holds 40 LFW images the job
    never saw (the last 20 of each class; it trained and tested on the first 60).
    """
    data, report = lfw_png_job["data"], lfw_png_job["report"]
    unseen = [np.flatnonzero(data.y == c)[-20:] for c in range(len(data.class_names))]
    assert all(idx.min() >= np.flatnonzero(data.y == c)[lfw_png_job["per_class"]]
               for c, idx in enumerate(unseen))
    test_idx = np.concatenate(unseen)
    rgb = np.repeat(data.x[..., None], 3, axis=-1)
    # The job's model, rebuilt in Keras from its final weights.
    task = tfft.build_model(lfw_png_job["spec"], num_classes=2, class_names=data.class_names,
                            compile=False)
    task.load_weights(os.path.join(report["run_dir"], "final.weights.h5"))
    folder = tmp_path / "lfw"
    for i in test_idx:      # grey 25x25 PNGs, one folder per class
        (folder / data.class_names[data.y[i]]).mkdir(parents=True, exist_ok=True)
        (folder / data.class_names[data.y[i]] / f"{i:03d}.png").write_bytes(
            tf.io.encode_png(data.x[i][..., None]).numpy())
    out = tmp_path / "eval"
    code = _run(["--model", report["export_path"], "--data", str(folder), "--split", "all",
                 "--no-plots", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    metrics = _report(out)["metrics"]
    ordered = sorted(test_idx, key=lambda i: (data.y[i], i))
    pred = task.predict(rgb[ordered], verbose=0).argmax(1)
    assert metrics["num_examples"] == len(test_idx) == 40
    assert metrics["confusion_matrix"] == skm.confusion_matrix(data.y[ordered], pred).tolist()
    assert metrics["accuracy"] >= 0.9
