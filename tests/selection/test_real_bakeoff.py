"""A real small bake-off on BBC News (offline assets): TF-IDF, a MiniLM linear probe,
and MiniLM's `top_k:2` fine-tune as the finalist, within a time budget."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.data import stratified_split
from tfft.selection import select

BUDGET_SECONDS = 240
PROBE, TFIDF, FINALIST = "minilm:feature_extraction", "tfidf_logreg", "minilm:top_k:2 (finalist)"
TOP_BLOCKS = ("transformer_layer_4/", "transformer_layer_5/")


@pytest.mark.slow
def test_bakeoff_with_a_minilm_top_k_finalist_on_160_bbc_articles(bbc, tmp_path):
    keep, _, _ = stratified_split(bbc.y, 0.0, 1.0 - 160 / len(bbc), seed=0)
    data = bbc.take(keep)
    train_idx, val_idx, _ = stratified_split(data.y, 60 / 160, 0.0, seed=0)
    train, val = data.take(train_idx), data.take(val_idx)
    assert (len(train), len(val)) == (100, 60)
    board = select([PROBE, TFIDF], train, val, budget_seconds=BUDGET_SECONDS, finalists=1,
                   sequence_length=32, out_dir=str(tmp_path), verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert set(rows) == {PROBE, TFIDF, FINALIST}
    for row in rows.values():
        # Finished, not skipped: each row holds a real score and the time it used.
        assert row.ok, (row.candidate, row.reason)
        assert 0.0 <= row.value <= 1.0 and row.train_seconds > 0, row
    # Chance macro F1 for 5 balanced classes is about 0.2. Measured: TF-IDF 0.92,
    # probe 0.85, finalist 0.81 (8 steps of 32 at 5e-5 from the probe's head).
    for name in (PROBE, TFIDF, FINALIST):
        assert rows[name].value > 0.6, (name, rows[name].value)
    finalist, probe = rows[FINALIST], rows[PROBE]
    assert finalist.method == "top_k:2" and finalist.freeze == "top_k:2"
    assert finalist.params > 22_000_000

    # The reported score is the finalist model's own macro F1 on val.
    model = board.models[FINALIST]
    probs = model.predict(np.asarray(val.x).astype(str), verbose=0)
    assert finalist.value == pytest.approx(
        f1_score(val.y, probs.argmax(-1), average="macro"), abs=1e-5)

    # Its time includes the probe it started from, and fits the run and the budget.
    assert probe.train_seconds < finalist.train_seconds <= board.elapsed_seconds
    assert board.elapsed_seconds <= BUDGET_SECONDS

    # It trained exactly the top two blocks and the head: the probe's model holds the
    # pretrained backbone, and every weight below the top two blocks is bitwise equal.
    tuned = {w.path: w.numpy() for w in model.weights}
    pretrained = {w.path: w.numpy() for w in board.models[PROBE].weights}
    assert tuned.keys() == pretrained.keys()
    trainable = {w.path for w in model.trainable_weights}
    assert trainable and all(p.startswith((*TOP_BLOCKS, "head/")) for p in trainable)
    moved = {p for p in tuned if not np.array_equal(tuned[p], pretrained[p])}
    assert moved <= trainable, sorted(moved - trainable)[:5]
    for prefix in (*TOP_BLOCKS, "head/"):
        assert any(p.startswith(prefix) for p in moved), prefix

    with open(tmp_path / "leaderboard.json") as f:
        saved = {r["candidate"]: r for r in json.load(f)["rows"]}
    assert saved[FINALIST]["value"] == finalist.value
    assert saved[FINALIST]["train_seconds"] == finalist.train_seconds
    assert (tmp_path / "leaderboard.png").exists()
