"""`tfft recommend` / `tfft select` argument handling and exit codes."""

import argparse
import json
import os

import pytest

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.selection import cli


def parse(argv):
    parser = argparse.ArgumentParser(prog="tfft")
    subparsers = parser.add_subparsers(dest="command")
    cli.add_parser(subparsers)
    return parser.parse_args(argv)


def test_recommend_prints_ranked_reasons(capsys):
    args = parse(["recommend", "--task", "multiclass", "--modality", "text",
                  "--num-examples", "2000", "--compute", "cpu", "--latency-ms", "50"])
    assert cli.run(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1. keras_hub:all_minilm_l6_v2  method=top_k:2")
    assert "[medium_data]" in out[1]


def test_recommend_json_and_budget_in_seconds(capsys):
    args = parse(["recommend", "--task", "multiclass", "--modality", "text",
                  "--num-examples", "300", "--compute", "600", "--json"])
    assert cli.run(args) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs and all(r["method"] == "feature_extraction" for r in recs)
    assert all(r["estimated_seconds"] <= 600 for r in recs)


@pytest.mark.parametrize("argv, message", [
    (["recommend", "--task", "ranking", "--modality", "text", "--num-examples", "5"],
     "Unknown task"),
    (["recommend", "--task", "multiclass", "--modality", "text", "--num-examples", "5",
      "--compute", "abacus"], "Unknown compute"),
    (["select", "--dataset", "imagenet", "--candidates", "tfidf_logreg"], "Unknown dataset"),
    (["select", "--dataset", "bbc_news", "--candidates", "minilm:lora"], "Unknown candidate"),
    (["select", "--dataset", "rotten_tomatoes", "--classes", "fresh,stale",
      "--candidates", "tfidf_logreg"], "Unknown classes"),
    (["select", "--dataset", "bbc_news", "--candidates", "tfidf_logreg",
      "--max-examples", "5"], "--max-examples must be >= 10"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert cli.run(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tfft {argv[0]}: error:") and message in err


def test_select_writes_the_leaderboard(tmp_path, capsys):
    out = tmp_path / "board"
    args = parse(["select", "--dataset", "rotten_tomatoes", "--classes", "rotten,fresh",
                  "--candidates", "tfidf_logreg", "--max-examples", "200",
                  "--budget-seconds", "60", "--out", str(out)])
    assert cli.run(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["winner"] == "tfidf_logreg" and summary["freeze"] is None
    assert 0.0 <= summary["macro_f1"] <= 1.0
    assert lines[0].startswith("tfft select: rotten_tomatoes (2 classes), train/val = 140/60")
    assert sorted(os.listdir(out)) == ["leaderboard.csv", "leaderboard.json", "leaderboard.png"]
