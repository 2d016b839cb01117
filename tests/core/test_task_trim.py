"""`Task.make_dataset` cuts text batches to their longest sequence (`Task.trim_batches`)."""

import keras
import keras_hub
import numpy as np
import pytest

import tfft

from ..conftest import VOCAB, make_tiny_bert

WORDS = VOCAB[5:]
CLASSES = 3


def _texts(n=24, seed=0, longest=12):
    rng = np.random.default_rng(seed)
    return np.asarray([" ".join(rng.choice(WORDS, size=rng.integers(1, longest + 1)))
                       for _ in range(n)], dtype=object)


LABELS = np.arange(24) % CLASSES


def _widths(task, texts, batch_size=4):
    widths, longest = [], []
    for x, _ in task.make_dataset(texts, LABELS[: len(texts)], batch_size=batch_size):
        widths.append(int(x["token_ids"].shape[1]))
        longest.append(int(x["padding_mask"].numpy().sum(axis=1).max()))
    return widths, longest


class BatchOutputs(keras.callbacks.Callback):
    """The predicted batches' outputs, in the order `predict` ran them."""

    def __init__(self):
        super().__init__()
        self.rows = []

    def on_predict_batch_end(self, batch, logs=None):
        self.rows.extend(np.asarray(logs["outputs"]))

    @property
    def seen(self):
        return np.stack(self.rows)


def _cut_and_padded(task, run):
    """`run(task)` with the batches cut (default), then padded to the fixed length."""
    cut = run(task)
    task.trim_batches = False
    try:
        return cut, run(task)
    finally:
        task.trim_batches = None


def test_text_batches_are_cut_to_their_longest_and_give_the_padded_outputs(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=CLASSES, freeze="full")
    texts = _texts()
    widths, longest = _widths(task, texts)
    assert widths == longest and max(widths) < 16, widths  # the preprocessor pads to 16

    batches = BatchOutputs()
    cut, padded = _cut_and_padded(
        task, lambda t: t.predict(texts, batch_size=4, verbose=0, callbacks=[batches]))
    np.testing.assert_allclose(cut, padded, atol=1e-6)  # each text's own, in the given order
    # Cut, `predict` ran the texts shortest first (fewer pad tokens per batch).
    by_length = np.argsort([len(t) for t in texts], kind="stable")
    np.testing.assert_allclose(batches.seen[: len(texts)], cut[by_length], atol=1e-6)
    cut, padded = _cut_and_padded(
        task, lambda t: t.evaluate(texts, LABELS, batch_size=4, verbose=0))
    np.testing.assert_allclose(cut, padded, rtol=1e-6)
    task.trim_batches = False
    assert set(_widths(task, texts)[0]) == {16}


def test_training_on_cut_batches_moves_the_weights_as_on_padded_ones(tiny_text_preprocessor):
    texts = _texts(seed=1)

    def train(trim):
        # Without dropout: its random masks are drawn per shape.
        backbone = tfft.load_backbone(make_tiny_bert(num_layers=2, dropout=0.0))
        backbone.preprocessor = tiny_text_preprocessor
        task = tfft.build_model(backbone, num_classes=CLASSES, freeze="full", dropout=0.0,
                                compile=False)
        task.trim_batches = trim
        task.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
        widths, _ = _widths(task, texts, batch_size=6)
        assert (max(widths) < 16) == (trim is None), widths
        before = [w.numpy().copy() for w in task.trainable_weights]
        history = task.fit(texts, LABELS, batch_size=6, epochs=2, shuffle=False, verbose=0)
        return before, [w.numpy() for w in task.trainable_weights], history.history["loss"]

    before, cut, cut_loss = train(None)
    _, padded, padded_loss = train(False)
    np.testing.assert_allclose(cut_loss, padded_loss, rtol=1e-5)
    moved = 0
    for start, a, b in zip(before, cut, padded, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        moved += not np.allclose(a, start)
    assert moved > len(before) // 2  # the comparison is of trained weights


def _xla_task(tokenizer):
    """A tiny BERT task at 64 tokens, compiled with `jit_compile=True`."""
    backbone = tfft.load_backbone(make_tiny_bert(num_layers=2, max_sequence_length=64))
    backbone.preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=64)
    task = tfft.build_model(backbone, num_classes=CLASSES, freeze="full", compile=False)
    task.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=True)
    return task


def test_under_xla_widths_round_up_to_multiples_of_16(tiny_tokenizer):
    task = _xla_task(tiny_tokenizer)
    texts = _texts(longest=30)
    widths, longest = _widths(task, texts, batch_size=8)
    pairs = zip(widths, longest, strict=True)
    assert all(w % 16 == 0 and w - 16 < n <= w for w, n in pairs), widths
    assert max(widths) < 64
    cut, padded = _cut_and_padded(task, lambda t: t.predict(texts, batch_size=8, verbose=0))
    np.testing.assert_allclose(cut, padded, atol=1e-5)


@pytest.mark.parametrize("case", ["token_classification", "trim_batches_false"])
def test_fixed_length_stays_where_asked_or_where_a_cut_changes_outputs(tiny_text_backbone, case):
    if case == "token_classification":  # one output per token: its width is the labels'
        task = tfft.build_model(tiny_text_backbone, task="token_classification",
                                num_classes=CLASSES)
    else:
        task = tfft.build_model(tiny_text_backbone, num_classes=CLASSES)
        task.trim_batches = False
    texts = _texts(n=8)
    for x in task.make_dataset(texts, batch_size=4):
        assert x["token_ids"].shape[1] == 16


def test_tfft_evaluate_scores_raw_texts_through_the_tasks_own_predict(tiny_text_backbone):
    from tfft.evaluation import evaluate

    task = tfft.build_model(tiny_text_backbone, num_classes=CLASSES, freeze="full")
    texts = _texts()
    report = evaluate(task, (texts, LABELS), batch_size=4)
    # Bit for bit `Task.predict`'s scores (cut batches, shortest first) ...
    np.testing.assert_array_equal(report.y_score, task.predict(texts, batch_size=4, verbose=0))
    # ... which are the padded batches' to float rounding.
    task.trim_batches = False
    padded = evaluate(task, (texts, LABELS), batch_size=4)
    np.testing.assert_allclose(report.y_score, padded.y_score, atol=1e-6)
    assert report.metrics["confusion_matrix"] == padded.metrics["confusion_matrix"]


def test_pad_to_multiple_rounds_widths_up_within_the_limit():
    from tfft.utils.tfdata import pad_to_multiple

    batch = {"token_ids": np.array([[7, 8, 9, 0, 0]]), "segment_ids": np.zeros((1, 5), int),
             "padding_mask": np.array([[True, True, True, False, False]]),
             "label_ids": np.array([3])}
    padded = pad_to_multiple(batch, 16, pad_token_id=1)
    assert padded["token_ids"].shape == (1, 16)
    np.testing.assert_array_equal(padded["token_ids"][0], [7, 8, 9, 0, 0] + [1] * 11)
    np.testing.assert_array_equal(padded["padding_mask"][0], [True] * 3 + [False] * 13)
    np.testing.assert_array_equal(padded["segment_ids"], np.zeros((1, 16)))
    np.testing.assert_array_equal(padded["label_ids"], [3])  # not a sequence feature
    assert pad_to_multiple(batch, 16, limit=12)["token_ids"].shape == (1, 12)
    assert pad_to_multiple(batch, 16, limit=4)["token_ids"].shape == (1, 5)  # never cut
    assert pad_to_multiple(batch, 5)["token_ids"].shape == (1, 5)
    assert pad_to_multiple({"x": np.ones((1, 5))}, 16)["x"].shape == (1, 5)  # no mask


def test_under_xla_length_bucketed_batches_pad_up_to_multiples_of_16(tiny_tokenizer):
    # make_text_dataset(bucketing=True) cuts each batch to its longest: up to
    # 64 widths here, each an XLA compilation; a jit-compiled Task rounds them up.
    task = _xla_task(tiny_tokenizer)
    texts = _texts(longest=30)
    bucketed = tfft.data.make_text_dataset((texts, LABELS), preprocessor=task.preprocessor,
                                           batch_size=8, bucketing=True)
    pad_id = tiny_tokenizer.pad_token_id
    widths = []
    for (x, y), (raw, raw_y) in zip(task.make_dataset(bucketed), bucketed, strict=True):
        cut, width = raw["token_ids"].shape[1], x["token_ids"].shape[1]
        widths.append(cut)
        assert width % 16 == 0 and width - 16 < cut <= width <= 64, (cut, width)
        for key in ("token_ids", "segment_ids", "padding_mask"):
            np.testing.assert_array_equal(x[key][:, :cut], raw[key])
        assert np.all(x["token_ids"][:, cut:] == pad_id) and not np.any(x["padding_mask"][:, cut:])
        np.testing.assert_array_equal(y, raw_y)
    assert any(w % 16 for w in widths)  # the dataset's own widths were not multiples
    rounded, as_cut = _cut_and_padded(task, lambda t: t.predict(bucketed, verbose=0))
    np.testing.assert_allclose(rounded, as_cut, atol=1e-5)  # the padding is masked out
