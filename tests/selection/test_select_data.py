"""`tfft select --data SOURCE`: a bake-off on the user's own data (issue 24, items 4 and 5)."""

import argparse
import json
import os

import numpy as np
import pandas as pd
import pytest

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.selection import cli

WORDS = {
    "animals": ["cat", "dog", "horse", "bird", "cow", "fox"],
    "food": ["bread", "soup", "cheese", "apple", "rice", "pie"],
    "sport": ["match", "goal", "team", "race", "ball", "coach"],
}


def _texts(rows, seed=0):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(rows):
        label = list(WORDS)[i % 3]
        texts.append(" ".join(rng.choice(WORDS[label], 4)) + " and more words")
        labels.append(label)
    return texts, labels


def _csv(path, rows, seed=0, **extra):
    texts, labels = _texts(rows, seed)
    pd.DataFrame({"sentence": texts, "topic": labels, **extra}).to_csv(path, index=False)
    return str(path)


def _run(argv):
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["select", *argv])
    return args.func(args)


COLUMNS = ["--text-column", "sentence", "--label-column", "topic"]


def test_select_on_a_csv_of_own_texts(tmp_path, capsys):
    path = _csv(tmp_path / "topics.csv", 60)
    out = tmp_path / "board"
    code = _run(["--data", path, *COLUMNS, "--candidates", "tfidf_logreg",
                 "--budget-seconds", "60", "--out", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[0].startswith(f"tfft select: {path} (3 classes), train/val = 42/18")
    summary = json.loads(lines[-1])
    assert summary["winner"] == "tfidf_logreg" and summary["macro_f1"] > 0.9
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["class_names"] == ["animals", "food", "sport"]


def test_given_validation_file_is_the_scored_split(tmp_path, capsys):
    train = _csv(tmp_path / "train.jsonl.csv", 30)
    val_path = tmp_path / "val.jsonl"
    texts, labels = _texts(9, seed=1)
    val_path.write_text("".join(json.dumps({"sentence": t, "topic": y}) + "\n"
                                for t, y in zip(texts, labels, strict=True)))
    code = _run(["--data", train, "--val-data", str(val_path), *COLUMNS,
                 "--candidates", "tfidf_logreg", "--budget-seconds", "60"])
    out = capsys.readouterr().out
    assert code == 0
    # All 30 rows train; the 9 JSONL rows are the validation split, not a cut of the CSV.
    assert "train/val = 30/9" in out


def test_default_candidates_follow_the_modality():
    text = cli.default_candidates("text")
    image = cli.default_candidates("image")
    assert text[0] == "tfidf_logreg" and "keras_hub:all_minilm_l6_v2:feature_extraction" in text
    assert "offline:efficientnet_lite0:feature_extraction" in image
    assert "tfidf_logreg" not in image and not set(text) & set(image)


def _image_folder(root, broken=False):
    rng = np.random.default_rng(0)
    import tensorflow as tf

    for cls in ("face", "not_face"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            (root / cls / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    if broken:
        (root / "face" / "broken.png").write_bytes(b"not an image")
    return str(root)


@pytest.mark.parametrize("case", [
    "missing_column", "empty", "one_class", "outside_class_names", "unreadable_image",
    "regression", "neither", "both", "bad_encoding",
])
def test_bad_input_exits_2_names_the_problem_and_writes_nothing(case, tmp_path, capsys):
    out = tmp_path / "board"
    good = _csv(tmp_path / "good.csv", 30)
    argv, message = {
        "missing_column": (["--data", good, "--label-column", "topic"],
                           r"'text' \(--text-column\) is not in CSV file .*"
                           r"Available columns: \['sentence', 'topic'\]"),
        "empty": (["--data", str(tmp_path / "empty.csv"), *COLUMNS], "empty.csv is empty"),
        "one_class": (["--data", _csv(tmp_path / "one.csv", 1), *COLUMNS],
                      "one class only"),
        "outside_class_names": (["--data", good, *COLUMNS, "--class-names", "animals,food"],
                                r"'sport' at row 2 is not one of the declared classes "
                                r"\['animals', 'food'\]"),
        "unreadable_image": (["--data", _image_folder(tmp_path / "img", broken=True)],
                             r"broken.png is unreadable or corrupt.*--on-error 'skip'"),
        "regression": (["--data", good, *COLUMNS, "--task", "regression"],
                       "tfft select ranks classifiers"),
        "neither": ([], "Pass your data with --data SOURCE"),
        "both": (["--data", good, "--dataset", "bbc_news"], "not both"),
        "bad_encoding": (["--data", good, *COLUMNS, "--encoding", "klingon"],
                         "Unknown --encoding 'klingon'"),
    }[case]
    (tmp_path / "empty.csv").write_text("")
    code = _run([*argv, "--candidates", "tfidf_logreg", "--budget-seconds", "30",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("tfft select: error:")
    assert __import__("re").search(message, err), (message, err)
    assert not out.exists()


def test_on_error_skip_counts_and_reports_bad_files(tmp_path, capsys):
    root = tmp_path / "docs"
    texts, labels = _texts(30)
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / f"{i}.txt").write_text(text)
    (root / "food" / "latin1.txt").write_bytes("cr\xe8me br\xfbl\xe9e".encode("latin-1"))
    argv = ["--data", str(root), "--candidates", "tfidf_logreg", "--budget-seconds", "60"]
    assert _run(argv) == 2
    assert "latin1.txt is not valid utf-8" in capsys.readouterr().err
    assert _run([*argv, "--on-error", "skip"]) == 0
    out = capsys.readouterr().out
    assert f"skipped 1 bad record(s) of {root} (--on-error skip)" in out
    assert "train/val = 21/9" in out     # 30 good files, the bad one left out


@pytest.mark.slow
def test_select_on_a_bbc_news_csv_with_the_default_candidates(tmp_path, capsys):
    """Issue 24 item 4 on real data: BBC News written as a CSV, the offline text candidates.

    Slow (~25 s on 2 cores): it loads all-MiniLM-L6-v2 and embeds 150 articles.
    """
    from tfft.data import load_bbc_news, stratified_split

    data = load_bbc_news()
    keep, _, _ = stratified_split(data.y, 0.0, 1.0 - 150 / len(data), seed=0)
    path = tmp_path / "bbc.csv"
    pd.DataFrame({"article": data.x[keep], "topic": np.array(data.class_names)[data.y[keep]]}
                 ).to_csv(path, index=False)
    out = tmp_path / "board"
    code = _run(["--data", str(path), "--text-column", "article", "--label-column", "topic",
                 "--budget-seconds", "90", "--finalists", "0", "--sequence-length", "64",
                 "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["candidate"]: row for row in board["rows"]}
    probe = rows["keras_hub:all_minilm_l6_v2:feature_extraction"]
    assert rows["tfidf_logreg"]["status"] == "ok" and probe["status"] == "ok", rows
    # Both are real classifiers of BBC topics, even from 105 training articles.
    assert probe["value"] > 0.8 and rows["tfidf_logreg"]["value"] > 0.6
    summary = json.loads(printed.strip().splitlines()[-1])
    assert summary["winner"] == board["winner"] and summary["out"] == str(out)
    assert sorted(os.listdir(out)) == ["leaderboard.csv", "leaderboard.json", "leaderboard.png"]
