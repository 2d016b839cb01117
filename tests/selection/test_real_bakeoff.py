"""A real small bake-off: MiniLM features vs TF-IDF on BBC News (offline assets)."""

import pytest

import tfft  # noqa: F401  selects the TensorFlow backend first
from tfft.data import stratified_split
from tfft.selection import Candidate, select


@pytest.mark.slow
def test_minilm_probe_vs_tfidf_on_300_bbc_articles(bbc, minilm, tmp_path):
    keep, _, _ = stratified_split(bbc.y, 0.0, 1.0 - 300 / len(bbc), seed=0)
    data = bbc.take(keep)
    train_idx, val_idx, _ = stratified_split(data.y, 0.3, 0.0, seed=0)
    train, val = data.take(train_idx), data.take(val_idx)
    # The session's MiniLM (64 tokens) is reused rather than loaded again.
    probe = Candidate(minilm, "feature_extraction", name="minilm:feature_extraction")
    board = select([probe, "tfidf_logreg"], train, val, budget_seconds=900, finalists=0,
                   out_dir=str(tmp_path), verbose=False)
    rows = {r.candidate: r for r in board.rows}
    assert set(rows) == {"minilm:feature_extraction", "tfidf_logreg"}
    for row in rows.values():
        assert row.ok, row.reason
        # Chance macro F1 for 5 balanced classes is about 0.2; both are far above it.
        assert row.value > 0.7, (row.candidate, row.value)
    assert rows["minilm:feature_extraction"].params > 22_000_000
    assert board.winner.candidate in rows
    assert (tmp_path / "leaderboard.png").exists()
