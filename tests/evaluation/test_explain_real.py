"""Attributions on the real assets: a fine-tuned MiniLM on BBC News, EfficientNet-Lite0.

The text model is the session's reduced main job (`finetune_run`: 300 BBC
articles, sequence length 64); no other model is trained here.
"""

import re
from collections import Counter

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

import tfft
from tfft.evaluation import explain, slice_metrics, text_length_groups

pytestmark = pytest.mark.slow

TOP_K = 5


def _words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def sport_explanation(finetune_run, bbc):
    task = finetune_run["model"]
    sports = bbc.class_names.index("sports")
    rng = np.random.default_rng(0)
    candidates = rng.permutation(np.flatnonzero(np.asarray(bbc.y) == sports))[:12]
    texts = [str(bbc.x[i]) for i in candidates]
    predicted = np.asarray(task.predict(texts, verbose=0)).argmax(axis=1)
    chosen = [i for i, p in zip(candidates, predicted, strict=True) if p == sports][:10]
    assert len(chosen) >= 8, "the fine-tuned model should recognise most sport articles"
    explanation = explain(task, [str(bbc.x[i]) for i in chosen],
                          method="integrated_gradients", targets=sports, steps=50)
    return explanation, sports, set(chosen)


def _sport_words(bbc, sports, left_out):
    """Words at least 5x as frequent (per word) in sport articles as in the other classes.

    Counted over the BBC corpus without the explained articles, words seen at
    least 5 times: a lexicon from the data, not from the model.
    """
    counts = {True: Counter(), False: Counter()}
    for i, (text, label) in enumerate(zip(bbc.x, bbc.y, strict=True)):
        if i not in left_out:
            counts[int(label) == sports].update(_words(str(text)))
    total = {k: sum(c.values()) for k, c in counts.items()}
    return {w for w, n in counts[True].items()
            if n >= 5 and n / total[True] >= 5 * (counts[False][w] + 1) / total[False]}


def test_top_attributed_words_of_sport_articles_are_sport_words(sport_explanation, bbc):
    explanation, sports, chosen = sport_explanation
    lexicon = _sport_words(bbc, sports, chosen)
    hits = top = seen_sport = seen = 0
    for i in range(len(explanation)):
        words = [w.lower() for w in explanation.words[i]]
        top_words = [w.lower() for w, _ in explanation.top_words(i, TOP_K)]
        hits += sum(w in lexicon for w in top_words)
        top += len(top_words)
        seen_sport += sum(w in lexicon for w in words)
        seen += len(words)
    top_rate, chance = hits / top, seen_sport / seen
    print(f"sport words: {len(lexicon)}; top-{TOP_K} rate {top_rate:.3f}, chance {chance:.3f}")
    # Chance: a word drawn at random from the words the model saw in the same
    # articles is a sport word this often. The 5 words with the largest
    # attribution toward "sports" must be sport words at least 3 times as often.
    assert top_rate >= 3 * chance, (top_rate, chance)


def test_integrated_gradients_are_complete_within_five_percent(sport_explanation):
    explanation, sports, _ = sport_explanation
    assert explanation.completeness_error.max() < 0.05
    for i in range(len(explanation)):
        total = explanation.attributions[i].sum()
        delta = explanation.scores[i] - explanation.baseline_scores[i]
        assert abs(total - delta) <= 0.05 * abs(delta)
    assert np.all(explanation.targets == sports)


def test_slice_metrics_on_bbc_equal_sklearn_per_slice(finetune_run, bbc):
    task = finetune_run["model"]
    rng = np.random.default_rng(1)
    rows = rng.choice(len(bbc.y), 80, replace=False)
    texts = [str(bbc.x[i]) for i in rows]
    y_true = np.asarray(bbc.y)[rows]
    y_pred = np.asarray(task.predict(texts, verbose=0)).argmax(axis=1)
    groups = text_length_groups(texts, bins=3)
    report = slice_metrics(y_true, y_pred, groups, slice_by="length")
    assert len(report.slices) == 3
    for row in report.slices:
        keep = np.array([g == row["slice"] for g in groups])
        assert row["support"] == keep.sum()
        assert row["accuracy"] == accuracy_score(y_true[keep], y_pred[keep])
        assert row["macro_f1"] == f1_score(y_true[keep], y_pred[keep], average="macro",
                                           zero_division=0)
    accuracies = [r["accuracy"] for r in report.slices]
    assert report.gaps["accuracy"]["gap"] == pytest.approx(max(accuracies) - min(accuracies))


@pytest.fixture(scope="module")
def lite0():
    return tfft.load_imagenet_classifier("efficientnet_lite0")


def test_grad_cam_mass_lies_on_the_cat(lite0, tmp_path):
    from skimage.data import chelsea

    model, preprocessor = lite0
    image = chelsea()  # 300 x 451: the cat's face fills the left three quarters
    explanation = explain(model, [image], method="grad_cam", preprocessor=preprocessor)
    heat = explanation.attributions[0]
    assert heat.shape == image.shape[:2]
    assert int(explanation.targets[0]) in (281, 282, 285)  # tabby, tiger cat, Egyptian cat
    # Drawn by hand from the photo: the face (eyes, nose, muzzle) lies in rows
    # 40-290, columns 60-360, 55% of the picture.
    face = np.zeros(heat.shape, bool)
    face[40:290, 60:360] = True
    share = heat[face].sum() / heat.sum()
    # Most of the mass, and clearly more than the box's share of the area.
    assert share > 0.5 and share > 1.2 * face.mean(), (share, face.mean())
    assert face[np.unravel_index(np.argmax(heat), heat.shape)]
    paths = explanation.save(str(tmp_path))
    assert any(p.endswith(".png") for p in paths)


def test_evaluate_cli_explains_the_real_export_with_its_keras_source(finetune_run, tmp_path,
                                                                       capsys):
    import argparse
    import json

    from tfft.evaluation import cli

    source = str(tmp_path / "task.keras")
    finetune_run["model"].save(source)
    out = tmp_path / "eval"
    parser = argparse.ArgumentParser(prog="tfft")
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", "--model", finetune_run["export_path"], "--explain",
                              "3", "--slice-by", "length", "--keras-model", source,
                              "--explain-steps", "32", "--out", str(out)])
    assert args.func(args) == 0, capsys.readouterr().err
    with open(out / "report.json") as f:
        report = json.load(f)
    metrics, names = report["metrics"], report["class_names"]
    # Slices partition the split: support adds up, accuracies average to the total.
    slices = report["slices"]["slices"]
    assert sum(s["support"] for s in slices) == metrics["num_examples"]
    assert sum(s["support"] * s["accuracy"] for s in slices) / metrics["num_examples"] == \
        pytest.approx(metrics["accuracy"])
    # Most-confused pairs are the confusion matrix's off-diagonal cells.
    matrix = np.asarray(metrics["confusion_matrix"])
    assert {(p["true"], p["predicted"], p["count"]) for p in report["most_confused"]} == {
        (names[i], names[j], int(matrix[i, j])) for i in range(len(names))
        for j in range(len(names)) if i != j and matrix[i, j] > 0}
    wrong = int(matrix.sum() - np.trace(matrix))
    assert len(report["top_losses"]) == min(3, wrong)
    with open(out / "top_losses.json") as f:
        explained = json.load(f)
    assert explained["method"] == "integrated_gradients"
    for row, example in zip(report["top_losses"], explained["examples"], strict=True):
        assert row["true"] != row["predicted"] == example["target"]
        assert example["completeness_error"] < 0.05
    assert 0.0 <= report["calibration"]["ece"] <= 1.0
    assert sum(b["count"] for b in report["calibration"]["bins"]) == metrics["num_examples"]
