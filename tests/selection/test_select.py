"""select(): bake-off rows, budget enforcement, skips, leaderboard files, bad input."""

import ast
import csv
import json
import pathlib
import re
import socket

import numpy as np
import pytest

import tfft  # selects the TensorFlow backend first
from tfft.data import LabeledData, load_digits, stratified_split
from tfft.selection import Candidate, Leaderboard, LeaderboardRow, select
from tfft.selection import metrics as M

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def split(data, n, val_fraction=0.4, seed=0):
    keep, _, _ = stratified_split(data.y, 0.0, 1.0 - n / len(data), seed=seed)
    data = data.take(keep)
    tr, va, _ = stratified_split(data.y, val_fraction, 0.0, seed=seed)
    return data.take(tr), data.take(va)


@pytest.fixture(scope="module")
def news(bbc):
    return split(bbc, 90)


@pytest.fixture(scope="module")
def digits():
    return split(load_digits(), 60)


@pytest.fixture
def offline_network(monkeypatch):
    """Downloads fail at the network boundary, as on a machine without internet."""

    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)


def never_called(train, val):
    raise AssertionError("a candidate over budget must not run")


def test_tfidf_and_backbone_probe_rows_and_files(news, tiny_text_backbone, tmp_path):
    train, val = news
    probe = Candidate(tiny_text_backbone, "feature_extraction", name="tiny_bert:fe")
    board = select(["tfidf_logreg", probe], train, val, budget_seconds=300, finalists=1,
                   out_dir=str(tmp_path), verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert set(rows) == {"tfidf_logreg", "tiny_bert:fe"}
    assert all(r.ok and 0.0 <= r.value <= 1.0 for r in rows.values())
    # TF-IDF on 54 real BBC articles is far above chance (0.2 for 5 classes).
    assert rows["tfidf_logreg"].value > 0.5
    assert rows["tiny_bert:fe"].params == board.models["tiny_bert:fe"].count_params()
    assert rows["tiny_bert:fe"].freeze == "feature_extraction"
    assert all(r.train_seconds > 0 and r.inference_per_second > 0 for r in rows.values())
    # The logistic-regression head is copied into the Keras head: the trained model
    # predicts what the probe scored.
    model = board.models["tiny_bert:fe"]
    probs = model.predict(tfft.data.make_dataset(val, tiny_text_backbone), verbose=0)
    assert M.score("macro_f1", val.y, probs.argmax(-1), 5) == pytest.approx(
        rows["tiny_bert:fe"].value, abs=1e-6)
    # No finalist: a Backbone object cannot be reloaded fresh for fine-tuning.
    assert not any("finalist" in name for name in rows)

    with open(tmp_path / "leaderboard.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["candidate"] for r in table] == [r.candidate for r in board.rows]
    assert float(table[0]["value"]) == pytest.approx(board.rows[0].value)
    data = json.loads((tmp_path / "leaderboard.json").read_text())
    assert data["winner"] == board.winner.candidate and data["metric"] == "macro_f1"
    again = Leaderboard.load(str(tmp_path / "leaderboard.json"))
    assert [r.to_dict() for r in again.rows] == [r.to_dict() for r in board.rows]
    png = (tmp_path / "leaderboard.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    import matplotlib.image

    assert matplotlib.image.imread(str(tmp_path / "leaderboard.png")).shape[0] > 100


def test_budget_skips_what_would_not_fit_without_running_it(news):
    train, val = news
    slow = Candidate(method="custom", name="slow_model", fit_predict=never_called,
                     estimated_seconds=10_000)
    board = select(["tfidf_logreg", slow], train, val, budget_seconds=60, verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert rows["slow_model"].status == "skipped"
    assert "estimated 10000 s >" in rows["slow_model"].reason
    assert "of the 60 s budget" in rows["slow_model"].reason
    assert rows["slow_model"].estimated_seconds == 10_000
    assert board.winner.candidate == "tfidf_logreg" and board.rows[-1].candidate == "slow_model"
    assert board.elapsed_seconds < 60


def test_budget_counts_time_already_spent(news):
    train, val = news
    calls = []

    def sleepy(train, val):
        import time

        calls.append("sleepy")
        time.sleep(1.5)
        return {"predictions": np.zeros(len(val), np.int64), "params": 1}

    first = Candidate(method="custom", name="a_sleepy", fit_predict=sleepy,
                      estimated_seconds=0.1)
    second = Candidate(method="custom", name="b_needs_2s", fit_predict=never_called,
                       estimated_seconds=1.0)
    board = select([first, second], train, val, budget_seconds=2.0, verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert calls == ["sleepy"] and rows["a_sleepy"].ok
    assert rows["b_needs_2s"].status == "skipped" and "left of the 2 s budget" in (
        rows["b_needs_2s"].reason)


def test_budget_too_small_for_any_candidate_raises(news):
    train, val = news
    big = Candidate(method="custom", name="big", fit_predict=never_called,
                    estimated_seconds=100)
    with pytest.raises(ValueError, match=r"budget_seconds=5 is too small.*big ~100 s"):
        select([big, "minilm:feature_extraction"], train, val, budget_seconds=5,
               verbose=False)


def test_modality_mismatch_is_a_skipped_row(news, digits):
    train, val = news
    board = select(["tfidf_logreg", "offline:efficientnet_lite0:feature_extraction"],
                   train, val, budget_seconds=120, verbose=False)
    row = {r.candidate: r for r in board.rows}["offline:efficientnet_lite0:feature_extraction"]
    assert row.status == "skipped"
    assert row.reason == "modality mismatch: the candidate takes image, the data is text"
    custom = Candidate(method="custom", fit_predict=lambda tr, va: {
        "predictions": np.zeros(len(va), np.int64)}, estimated_seconds=0.1)
    board = select(["tfidf_logreg", custom], *digits, budget_seconds=60, verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert rows["tfidf_logreg"].status == "skipped" and "takes text" in rows[
        "tfidf_logreg"].reason
    assert board.winner.candidate == "custom"


def test_image_probe_finalist_fine_tune_and_unavailable_weights(digits, offline_network,
                                                               tmp_path):
    train, val = digits
    tiny = {"weights": None, "alpha": 0.35, "input_size": 32}
    board = select(
        [Candidate("keras_app:MobileNetV2", "feature_extraction", name="mnv2:fe",
                   load_kwargs=tiny),
         "keras_app:MobileNetV2:feature_extraction"],
        train, val, budget_seconds=300, finalists=1, fine_tune_seconds=5, verbose=False,
        batch_size=16,
    )
    rows = {r.candidate: r for r in board.rows}
    assert set(rows) == {"mnv2:fe", "mnv2:top_k:2 (finalist)",
                         "keras_app:MobileNetV2:feature_extraction"}
    unavailable = rows["keras_app:MobileNetV2:feature_extraction"]
    assert unavailable.status == "skipped"
    assert "backbone unavailable here: NetworkUnavailableError" in unavailable.reason
    finalist = rows["mnv2:top_k:2 (finalist)"]
    assert finalist.ok and finalist.freeze == "top_k:2"
    steps = re.search(r"(\d+) steps of 16 .*stopped by (time|plan|data); planned (\d+)",
                      finalist.reason)
    assert steps, finalist.reason
    assert int(steps[1]) <= int(steps[3]) and (steps[2] != "plan" or steps[1] == steps[3])
    assert finalist.load_kwargs == tiny
    # The finalist's time includes its probe, so it costs more than the probe alone.
    assert finalist.train_seconds > rows["mnv2:fe"].train_seconds
    model = board.build_winner()
    assert model.output_shape == (None, 10)
    assert model.get_layer("backbone").trainable == (board.winner.freeze != "feature_extraction")


def test_fine_tune_candidate_trains_through_the_fine_tune_recipe(digits, tmp_path):
    """The fine-tune row's model is what `tfft.training.fine_tune` gives: top blocks moved,
    everything below them (BatchNorm statistics included) bitwise as loaded."""
    tiny = {"alpha": 0.35, "input_size": 32}
    start = tfft.load_backbone("keras_app:MobileNetV2", weights=None, **tiny)
    path = str(tmp_path / "mnv2.weights.h5")
    start.model.save_weights(path)
    kwargs = {"weights": path, **tiny}
    board = select([Candidate("keras_app:MobileNetV2", "top_k:2", name="mnv2:top_k:2",
                              load_kwargs=kwargs)],
                   *digits, budget_seconds=300, finalists=0, batch_size=16, verbose=False)
    row = board.rows[0]
    assert row.ok, row.reason
    steps = re.search(r"fine-tuning: (\d+) steps of 16 .*stopped by (plan|time)", row.reason)
    assert steps and int(steps[1]) >= 1, row.reason
    trained = board.models["mnv2:top_k:2"].get_layer("backbone").backbone
    top = {name for block in start.block_names[-2:] for name in block}
    moved = []
    for layer in start.model.layers:
        if not layer.weights:
            continue
        pairs = zip(layer.get_weights(), trained.get_layer(layer.name).get_weights(),
                    strict=True)
        same = all(np.array_equal(a, b) for a, b in pairs)
        if layer.name in top:
            moved.append(not same)
        else:
            assert same, f"{layer.name} is below the top 2 blocks but changed"
    assert any(moved), "the top 2 blocks did not train"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name):
                yield func.id, None
            elif isinstance(func, ast.Attribute):
                receiver = func.value.id if isinstance(func.value, ast.Name) else None
                yield func.attr, receiver


def test_selection_has_no_training_loop_of_its_own():
    """Keras training in selection goes through `fine_tune` (and the feature cache)."""
    import tfft.selection as package

    root = pathlib.Path(package.__file__).parent
    calls = {}
    for path in sorted(root.glob("*.py")):
        calls[path.name] = list(_calls(ast.parse(path.read_text())))
    for name, found in calls.items():
        for func, receiver in found:
            assert func not in ("compile_model", "train_on_batch"), (name, func)
            assert func != "compile" or receiver == "re", (name, receiver)
            # scikit-learn estimators (TF-IDF pipeline, probe classifier) may fit.
            assert func != "fit" or receiver in ("pipeline", "clf"), (name, receiver)
    runners = ast.parse((root / "runners.py").read_text())
    run_fine_tune = next(node for node in ast.walk(runners)
                         if isinstance(node, ast.FunctionDef) and node.name == "run_fine_tune")
    assert ("fine_tune", None) in set(_calls(run_fine_tune))


def test_zero_shot_on_images_and_unappliable_freeze_are_skipped_rows(digits):
    tiny = {"weights": None, "alpha": 0.35, "input_size": 32}
    board = select([Candidate("keras_app:MobileNetV2", "zero_shot", name="mnv2:zs",
                              load_kwargs=tiny),
                    Candidate("keras_app:MobileNetV2", "top_k:99", name="mnv2:top_k:99",
                              load_kwargs=tiny),
                    Candidate(method="custom", name="zeros", estimated_seconds=0.1,
                              fit_predict=lambda tr, va: {
                                  "predictions": np.zeros(len(va), np.int64)})],
                   *digits, budget_seconds=120, finalists=0, verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert rows["mnv2:zs"].status == "skipped" and "CLIP" in rows["mnv2:zs"].reason
    assert rows["mnv2:top_k:99"].status == "skipped"
    assert rows["mnv2:top_k:99"].reason.startswith(
        "freeze='top_k:99' cannot be applied to this backbone: ValueError: top_k asks for 99")
    assert board.winner.candidate == "zeros"


@pytest.mark.parametrize("candidates, match", [
    (["minilm:lora"], r"Unknown candidate.*tfidf_logreg.*Received: 'minilm:lora'"),
    (["nosuch:thing:feature_extraction"], r"Bad candidate .*Unknown or malformed backbone"),
    (["tfidf_logreg", "tfidf_logreg"], "unique. Received duplicates: \\['tfidf_logreg'\\]"),
    ([], "No candidates"),
])
def test_bad_candidates(news, candidates, match):
    with pytest.raises(ValueError, match=match):
        select(candidates, *news, verbose=False)


def test_bad_data_and_settings(news):
    train, val = news
    with pytest.raises(TypeError, match="LabeledData for train"):
        select(["tfidf_logreg"], (train.x, train.y), val)
    other = LabeledData(val.x, np.zeros(len(val), np.int64), ["a", "b"])
    with pytest.raises(ValueError, match="share class_names"):
        select(["tfidf_logreg"], train, other)
    for kwargs, match in [({"budget_seconds": 0}, "budget_seconds must be a positive"),
                          ({"metric": "auc"}, "Unknown metric"),
                          ({"finalists": -1}, "finalists must be a non-negative integer"),
                          ({"fine_tune_seconds": -3}, "fine_tune_seconds must be")]:
        with pytest.raises(ValueError, match=match):
            select(["tfidf_logreg"], train, val, verbose=False, **kwargs)
    with pytest.raises(TypeError, match="custom' candidate needs a callable"):
        Candidate(method="custom")


def test_leaderboard_ranking_table_and_build_errors(tmp_path):
    rows = [
        LeaderboardRow("slow_good", "feature_extraction", "keras_hub:all_minilm_l6_v2",
                       value=0.9, train_seconds=50.0, params=10),
        LeaderboardRow("fast_good", "tfidf_logreg", value=0.9, train_seconds=1.0, params=5),
        LeaderboardRow("skipped_one", "top_k:2", "keras_hub:all_minilm_l6_v2",
                       status="skipped", reason="estimated 900 s > 10 s left"),
        LeaderboardRow("worse", "zero_shot", "keras_hub:all_minilm_l6_v2", value=0.5,
                       train_seconds=3.0),
    ]
    board = Leaderboard(rows, class_names=["a", "b"])
    # Ties on the metric go to the cheaper run; skipped rows sink to the bottom.
    assert [r.candidate for r in board.rows] == ["fast_good", "slow_good", "worse",
                                                 "skipped_one"]
    assert board.winner.candidate == "fast_good" and board.winner.freeze is None
    assert board.best(buildable=True).candidate == "slow_good"
    table = board.table().splitlines()
    assert table[0].split()[:4] == ["rank", "candidate", "method", "macro_f1"]
    assert table[1].startswith("1 ") and table[-1].startswith("- ")
    assert "estimated 900 s > 10 s left" in table[-1]
    paths = board.save(str(tmp_path / "out"))
    assert pathlib.Path(paths["png"]).read_bytes()[:8] == PNG_MAGIC
    only_baseline = Leaderboard([rows[1]], class_names=["a", "b"])
    with pytest.raises(ValueError, match="No finished backbone candidate to build"):
        only_baseline.build_winner()
