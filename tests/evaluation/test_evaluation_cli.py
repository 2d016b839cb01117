import argparse
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

import tfft
from tfft.data import load_bbc_news, stratified_split
from tfft.evaluation import cli

TOPICS = {
    "animals": "cat|dog|horse|bird",
    "food": "bread|soup|cheese|apple",
    "sport": "match|goal|team|race",
}
BBC_TOPICS = {
    "business": "market|shares|company|economy|bank|profit",
    "entertainment": "film|music|star|award|show|actor",
    "politics": "election|minister|government|party|labour|tory",
    "sports": "match|cup|player|game|champion|coach",
    "tech": "technology|computer|software|users|mobile|net",
}


def _keyword_model(path, topics, metadata):
    """Exports a SavedModel whose serving_default scores raw texts by keyword counts."""
    patterns = list(topics.values())

    class Keywords(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def serve(self, inputs):
            words = tf.strings.split(tf.strings.lower(inputs))
            counts = [
                tf.reduce_sum(tf.cast(tf.strings.regex_full_match(words, p), tf.float32),
                              axis=-1)
                for p in patterns
            ]
            probs = tf.nn.softmax(2.0 * tf.stack(counts, axis=-1))
            return {"probabilities": probs, "class_ids": tf.argmax(probs, axis=-1)}

    module = Keywords()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    if metadata is not None:
        with open(os.path.join(path, cli.METADATA_FILE), "w") as f:
            json.dump(metadata, f)
    return path


@pytest.fixture(scope="module")
def topic_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("saved_models") / "topics" / "1")
    return _keyword_model(path, TOPICS, {"class_names": list(TOPICS), "task": "multiclass"})


@pytest.fixture(scope="module")
def topic_csv(tmp_path_factory):
    rows = [
        ("the cat chased a bird", "animals"), ("my dog and my horse", "animals"),
        ("a bird sang", "animals"), ("hot soup with bread", "food"),
        ("cheese and apple", "food"), ("the team won the match", "sport"),
        ("a late goal in the race", "sport"), ("the dog ate the cheese", "food"),
        ("team soup", "sport"), ("nothing here", "animals"),
    ]
    path = tmp_path_factory.mktemp("csv") / "topics.csv"
    import pandas as pd

    pd.DataFrame(rows, columns=["sentence", "topic"]).to_csv(path, index=False)
    return str(path), [r[0] for r in rows], [list(TOPICS).index(r[1]) for r in rows]


def _run(argv):
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", *argv])
    return args.func(args)


def test_csv_report_matches_sklearn(topic_model, topic_csv, tmp_path, capsys):
    csv_path, texts, labels = topic_csv
    out = tmp_path / "eval"
    code = _run(["--model", topic_model, "--data", csv_path, "--split", "all",
                 "--text-column", "sentence", "--label-column", "topic", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    probs = tf.saved_model.load(topic_model).signatures["serving_default"](
        inputs=tf.constant(texts))["probabilities"].numpy()
    pred = probs.argmax(axis=1)
    with open(out / "report.json") as f:
        report = json.load(f)
    assert report["class_names"] == list(TOPICS)
    assert report["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, pred))
    assert report["metrics"]["macro_f1"] == pytest.approx(
        skm.f1_score(labels, pred, average="macro"))
    assert report["metrics"]["confusion_matrix"] == skm.confusion_matrix(labels, pred).tolist()
    assert sorted(os.listdir(out)) == ["confusion_matrix.png", "per_class_f1.png", "report.json"]
    assert "confusion matrix" in printed and "animals" in printed
    assert str(out / "report.json") in printed


@pytest.mark.parametrize("max_examples", [None, 300])
def test_bbc_news_test_split_from_metadata(tmp_path, capsys, max_examples):
    split = {"seed": 3, "val_fraction": 0.1, "test_fraction": 0.2, "max_examples": max_examples}
    model = _keyword_model(
        str(tmp_path / "bbc" / "2"), BBC_TOPICS,
        {"class_names": list(BBC_TOPICS), "task": "multiclass", "dataset": "bbc_news",
         "split": split},
    )
    out = tmp_path / "eval"
    assert _run(["--model", model, "--out", str(out), "--no-plots"]) == 0
    report = json.loads((out / "report.json").read_text())
    # The test split as `tfft finetune` makes it: optional stratified subset, then split.
    data = load_bbc_news()
    if max_examples:
        keep, _, _ = stratified_split(data.y, 0.0, 1.0 - max_examples / len(data), 3)
        data = data.take(keep)
    _, _, test_idx = stratified_split(data.y, 0.1, 0.2, 3)
    assert report["metrics"]["num_examples"] == len(test_idx)
    supports = [report["metrics"]["per_class"][n]["support"] for n in BBC_TOPICS]
    assert supports == np.bincount(data.y[test_idx], minlength=5).tolist()
    probs = tf.saved_model.load(model).signatures["serving_default"](
        inputs=tf.constant(data.x[test_idx].astype(str)))["probabilities"].numpy()
    assert report["metrics"]["confusion_matrix"] == skm.confusion_matrix(
        data.y[test_idx], probs.argmax(axis=1)).tolist()
    # Keyword counting is a weak but real classifier on BBC News.
    assert report["metrics"]["accuracy"] > 0.5
    assert f"test split of bbc_news: {len(test_idx)} examples" in capsys.readouterr().out


def test_exit_2_with_clear_messages(topic_model, topic_csv, tmp_path, capsys):
    csv_path, _, _ = topic_csv
    csv_args = ["--text-column", "sentence", "--label-column", "topic"]
    cases = [
        (["--model", str(tmp_path / "missing"), "--data", csv_path], "no such folder"),
        (["--model", os.path.dirname(topic_model), "--data", csv_path],
         "has no saved_model.pb. It holds versions \\['1'\\]"),
        (["--model", topic_model, "--data", "imdb"], "Unknown dataset.*bbc_news"),
        (["--model", topic_model, "--data", csv_path, "--split", "all"],
         "has no column 'text' \\(set --text-column\\)"),
        (["--model", topic_model, "--data", csv_path, *csv_args, "--val-fraction", "0.3",
          "--test-fraction", "0"],
         "The test split is empty"),
    ]
    for argv, message in cases:
        assert _run([*argv, "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("tfft evaluate: error:")
        assert __import__("re").search(message, err), (message, err)


def test_metadata_class_names_must_match_model(tmp_path, topic_csv, capsys):
    csv_path, _, _ = topic_csv
    model = _keyword_model(str(tmp_path / "m" / "1"), TOPICS,
                           {"class_names": ["animals", "food"], "task": "multiclass"})
    code = _run(["--model", model, "--data", csv_path, "--split", "all", "--text-column",
                 "sentence", "--label-column", "topic", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "labels ['sport'] are not among the model's classes ['animals', 'food']" in err
    # Integer labels get past the CSV check and meet the model's 3 outputs.
    int_csv = tmp_path / "ints.csv"
    int_csv.write_text("text,label\ncat,0\nsoup,1\n")
    code = _run(["--model", model, "--data", str(int_csv), "--split", "all",
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "class_names has 2 names but the model outputs 3 classes" in capsys.readouterr().err


def test_image_export_from_tfft_export(tmp_path, capsys):
    """An image export by tfft.export is scored on PNG-encoded digits through the CLI."""
    import keras

    from tfft.data import load_digits
    from tfft.export import export_saved_model

    data = load_digits()
    _, _, test_idx = stratified_split(data.y, 0.15, 0.15, 0)
    images = np.repeat(data.x[..., None], 3, axis=-1).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255.0), keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(images, data.y, epochs=2, batch_size=128, verbose=0)
    path = export_saved_model(model, str(tmp_path / "digits"), class_names=data.class_names,
                  modality="image", image_size=(8, 8), verify=False,
                  metadata={"dataset": "digits",
                            "split": {"seed": 0, "val_fraction": 0.15, "test_fraction": 0.15}})
    out = tmp_path / "eval"
    assert _run(["--model", path, "--out", str(out)]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    pred = model.predict(images[test_idx], verbose=0).argmax(axis=1)
    assert report["metrics"]["num_examples"] == len(test_idx)
    assert report["metrics"]["confusion_matrix"] == skm.confusion_matrix(
        data.y[test_idx], pred).tolist()
    assert report["metrics"]["accuracy"] > 0.8


def test_registered_in_the_tfft_command(topic_model, topic_csv, tmp_path, capsys):
    from tfft.cli.main import main

    csv_path, _, _ = topic_csv
    code = main(["evaluate", "--model", topic_model, "--data", csv_path, "--split", "all",
                 "--text-column", "sentence", "--label-column", "topic", "--no-plots",
                 "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "report.json").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--data", csv_path])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def text_export(tiny_text_preprocessor, tmp_path_factory):
    """A tiny BERT Task exported by tfft: its graph holds TensorFlow Text tokenizer ops."""
    import keras
    import keras_hub

    from tfft.export import export_saved_model

    keras.utils.set_random_seed(0)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=tiny_text_preprocessor.tokenizer.vocabulary_size(), num_layers=1,
        num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16,
    )
    backbone = tfft.load_backbone(bert)
    backbone.preprocessor = tiny_text_preprocessor
    model = tfft.build_model(backbone, task="multiclass", num_classes=3, compile=False)
    root = tmp_path_factory.mktemp("text_export")
    path = export_saved_model(model, str(root / "topics"), class_names=list(TOPICS),
                              modality="text", verify=False)
    rows = [("the cat and the dog", "animals"), ("bread and soup", "food"),
            ("the team won the match", "sport"), ("a bird", "animals")]
    csv = root / "topics.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    return path, str(csv)


@pytest.mark.slow
def test_evaluate_loads_a_text_export_in_a_fresh_process(text_export, tmp_path):
    """Issue 25 item 1: `tfft evaluate` registers TensorFlow Text's ops before loading.

    Slow (~10-20 s: a new interpreter imports TensorFlow): the bug only shows in a
    process where nothing imported tensorflow_text yet, which this test process is not.
    """
    import subprocess
    import sys

    path, csv = text_export
    proc = subprocess.run(
        [sys.executable, "-m", "tfft.cli.main", "evaluate", "--model", path, "--data", csv,
         "--split", "all", "--no-plots", "--out", str(tmp_path / "eval")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RegexSplitWithOffsets" not in proc.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["num_examples"] == 4
    assert report["class_names"] == list(TOPICS)


def test_a_latin1_csv_names_the_file_the_line_and_encoding(topic_model, tmp_path, capsys):
    """Issue 25 item 9: a decoding error says where it is and how to fix it."""
    from tfft.cli.main import main

    latin1 = tmp_path / "topics_latin1.csv"
    latin1.write_bytes("text,label\nthe cat,animals\ncr\u00e8me soup,food\nthe team,sport\n"
                       .encode("latin-1"))
    argv = ["evaluate", "--model", topic_model, "--data", str(latin1), "--split", "all",
            "--no-plots", "--out", str(tmp_path / "eval")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(latin1) in err and "line 3" in err and "--encoding" in err
    assert not (tmp_path / "eval").exists()
    # The flag the message names reads the same file.
    assert main([*argv, "--encoding", "latin-1"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["metrics"]["num_examples"] == 3
    assert main([*argv, "--encoding", "klingon"]) == 2
    assert "Unknown --encoding 'klingon'" in capsys.readouterr().err


def test_csv_labels_as_float_ids_empty_cells_and_fractions(topic_model, topic_csv, tmp_path,
                                                           capsys):
    """Issue 25 item 5 in `tfft evaluate`: a float id column scores like the class names;
    an empty cell or a fractional label is an error naming it, never a dropped row."""
    import pandas as pd

    _, texts, labels = topic_csv
    args = ["--model", topic_model, "--split", "all", "--text-column", "sentence",
            "--label-column", "topic", "--no-plots"]

    def evaluate(name, column):
        path = tmp_path / f"{name}.csv"
        pd.DataFrame({"sentence": texts, "topic": column}).to_csv(path, index=False)
        code = _run([*args, "--data", str(path), "--out", str(tmp_path / name)])
        return code, capsys.readouterr()

    code, _ = evaluate("names", [list(TOPICS)[i] for i in labels])
    assert code == 0
    by_name = json.loads((tmp_path / "names" / "report.json").read_text())["metrics"]
    code, _ = evaluate("floats", [float(i) for i in labels])   # 0.0, 1.0, 2.0
    assert code == 0
    by_id = json.loads((tmp_path / "floats" / "report.json").read_text())["metrics"]
    assert by_id["confusion_matrix"] == by_name["confusion_matrix"]
    assert by_id["num_examples"] == len(texts)

    with_gap = [float(i) for i in labels]
    with_gap[3] = None
    code, captured = evaluate("gap", with_gap)
    assert code == 2 and "lines [5]" in captured.err and "empty" in captured.err
    code, captured = evaluate("fraction", [0.5 + i for i in labels])
    assert code == 2 and "regression" in captured.err
    assert not (tmp_path / "gap").exists() and not (tmp_path / "fraction").exists()


@pytest.mark.parametrize("metadata", [None, {"class_names": [], "task": "multiclass"}],
                         ids=["no-metadata", "export-without-names"])
def test_an_export_without_class_names_scores_ids_up_to_its_output_width(
        tmp_path, metadata, capsys):
    # Its classes are its 3 outputs: ids 0 and 2 alone (no 1 in the file) still
    # score as 3 classes, and a stray huge id is refused before any class is
    # named (it once named 10^8 classes: ~7 GB).
    import resource

    model = _keyword_model(str(tmp_path / "m" / "1"), TOPICS, metadata)
    ids = tmp_path / "ids.csv"
    ids.write_text("text,label\nthe cat,0\nmy dog,0\nhot soup,2\nteam,2\ngoal,0\n")
    assert _run(["--model", model, "--data", str(ids), "--split", "all",
                 "--out", str(tmp_path / "o")]) == 0, capsys.readouterr().err
    with open(tmp_path / "o" / "report.json") as f:
        report = json.load(f)
    assert report["class_names"] == ["0", "1", "2"]
    # the cat, my dog -> 0 and team -> 2 (right); hot soup -> 1, goal -> 2 (wrong).
    assert report["metrics"]["accuracy"] == pytest.approx(3 / 5)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for bad, valid in (("99999999", r"class ids must be 0\.\.2 \(the model's 3 outputs\)"),
                       ("-1", r"class ids must be 0\.\.2")):
        (tmp_path / "bad.csv").write_text(f"text,label\nthe cat,{bad}\nsoup,1\n")
        assert _run(["--model", model, "--data", str(tmp_path / "bad.csv"), "--split", "all",
                     "--out", str(tmp_path / "o2")]) == 2
        err = capsys.readouterr().err
        assert __import__("re").search(valid, err), err
        assert f"Received ids [{min(int(bad), 1)}, {max(int(bad), 1)}]" in err
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200


def test_load_eval_data_refuses_an_implausible_id_count_before_naming_classes(tmp_path):
    import resource

    path = tmp_path / "ids.csv"
    path.write_text("text,label\na,99999999\nb,0\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=r"100,000,000 classes for 2 rows"):
        cli.load_eval_data(str(path))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 200
    path.write_text("text,label\na,-1\nb,0\n")
    with pytest.raises(ValueError, match=r"class ids must be 0 or more\. Received ids \[-1, 0\]"):
        cli.load_eval_data(str(path))
