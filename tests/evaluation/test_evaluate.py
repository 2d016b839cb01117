import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm
from sklearn.datasets import load_digits

import tfft  # noqa: F401  (sets the Keras backend first)
from tfft.data import LabeledData
from tfft.evaluation import evaluate


@pytest.fixture(scope="module")
def digits_model():
    """A softmax regression on sklearn digits, trained for a few seconds."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:1400], order[1400:]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[train], y[train], epochs=4, batch_size=64, verbose=0)
    return model, x[test], y[test], digits.data[test].astype("float32")


@pytest.fixture(scope="module")
def digits_saved_model(digits_model, tmp_path_factory):
    """The digits model re-exported as a plain tf.Module taking raw 0-16 pixel values."""
    model, *_ = digits_model
    kernel, bias = (tf.constant(w) for w in model.layers[-1].get_weights())

    class RawDigits(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(kernel)
            self.bias = tf.Variable(bias)

        @tf.function(input_signature=[tf.TensorSpec([None, 64], tf.float32, name="pixels")])
        def serve(self, pixels):
            probs = tf.nn.softmax(tf.matmul(pixels / 16.0, self.kernel) + self.bias)
            return {"probabilities": probs, "class_ids": tf.argmax(probs, axis=-1)}

    module = RawDigits()
    path = str(tmp_path_factory.mktemp("digits_export") / "1")
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return tf.saved_model.load(path)


def test_keras_model_matches_sklearn_on_argmax(digits_model):
    model, x, y, _ = digits_model
    report = evaluate(model, (x, y), batch_size=50)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    m = report.metrics
    assert report.task == "multiclass"
    assert m["num_examples"] == len(y) == 397
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert m["accuracy"] > 0.85  # the model learnt something, so the check is not vacuous
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    assert m["roc_auc"] == pytest.approx(
        skm.roc_auc_score(y, model.predict(x, verbose=0), multi_class="ovr"), abs=1e-6)


def test_dataset_labeled_data_and_preprocess_agree(digits_model):
    model, x, y, raw = digits_model
    reference = evaluate(model, (x, y))
    batched = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    names = [f"digit_{i}" for i in range(10)]
    labeled = LabeledData(raw, y, names, "digits")
    from_batched = evaluate(model, batched)
    from_unbatched = evaluate(model, unbatched, batch_size=7)
    from_raw = evaluate(model, labeled, preprocess=lambda batch: batch / 16.0)
    for other in (from_batched, from_unbatched, from_raw):
        assert other.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]
        assert other.metrics["accuracy"] == reference.metrics["accuracy"]
    assert from_raw.class_names == names
    assert list(from_raw.metrics["per_class"]) == names


def test_saved_model_signature_on_raw_inputs(digits_model, digits_saved_model):
    model, x, y, raw = digits_model
    report = evaluate(digits_saved_model, (raw, y))
    pred = model.predict(x, verbose=0).argmax(axis=1)
    assert report.metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report.metrics["confusion_matrix"] == skm.confusion_matrix(y, pred).tolist()
    # float64 and int inputs are cast to the signature's float32.
    as_int = evaluate(digits_saved_model, (raw.astype("int64"), y))
    assert as_int.metrics["accuracy"] == report.metrics["accuracy"]


def test_plain_callable_and_tfsm_layer(digits_model, tmp_path):
    model, x, y, _ = digits_model
    reference = evaluate(model, (x, y))
    from_fn = evaluate(lambda batch: {"probabilities": model(batch)}, (x, y))
    assert from_fn.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]
    model.export(str(tmp_path / "export"), verbose=False)
    layer = keras.layers.TFSMLayer(str(tmp_path / "export"), call_endpoint="serve")
    from_layer = evaluate(layer, (x, y))
    assert from_layer.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]
    # The same export reloaded with tf.saved_model.load goes through serving_default.
    from_signature = evaluate(tf.saved_model.load(str(tmp_path / "export")), (x, y))
    assert from_signature.metrics["confusion_matrix"] == reference.metrics["confusion_matrix"]


def test_binary_keras_model_with_sigmoid_output():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, activation="sigmoid")])
    model.layers[0].set_weights([np.array([[4.0], [0.0], [0.0]], "float32"),
                                 np.zeros(1, "float32")])
    report = evaluate(model, (x, y), class_names=["neg", "pos"])
    prob = model.predict(x, verbose=0)[:, 0]
    assert report.task == "binary"
    assert report.metrics["accuracy"] == pytest.approx(
        skm.accuracy_score(y, (prob >= 0.5).astype(int)))
    assert report.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(y, prob))


# --- bad input -------------------------------------------------------------------------


def test_class_names_must_match_model_outputs(digits_model):
    model, x, y, _ = digits_model
    with pytest.raises(ValueError, match="class_names has 3 names but the model outputs 10"):
        evaluate(model, (x, y), class_names=["a", "b", "c"])
    # A long list is cut in the message (10^6 names once made a 13 MB message).
    with pytest.raises(ValueError) as raised:
        evaluate(model, (x, y), class_names=[str(i) for i in range(10**6)])
    assert len(str(raised.value)) < 400 and str(raised.value).endswith("'19'] ...")


def test_empty_and_mismatched_data(digits_model):
    model, x, y, _ = digits_model
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, tf.data.Dataset.from_tensor_slices((x, y)).take(0).batch(4))
    with pytest.raises(ValueError, match="differ in length: 397 inputs, 396 labels"):
        evaluate(model, (x, y[:-1]))


def test_labels_out_of_range(digits_model):
    model, x, y, _ = digits_model
    bad = y.copy()
    bad[0] = 12
    with pytest.raises(ValueError, match="outside \\[0, 10\\): \\[12\\]"):
        evaluate(model, (x, bad), task="multiclass")


def test_bad_arguments(digits_model, digits_saved_model):
    model, x, y, _ = digits_model
    with pytest.raises(TypeError, match=r"data must be a tf.data.Dataset"):
        evaluate(model, x)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, (x, y), batch_size=0)
    with pytest.raises(TypeError, match="model must be a Keras model"):
        evaluate(object(), (x, y))
    with pytest.raises(ValueError, match=r"several outputs.*\['a', 'b'\]"):
        evaluate(lambda batch: {"a": batch, "b": batch}, (x, y))
    with pytest.raises(TypeError, match="takes float32 but the data holds string"):
        evaluate(digits_saved_model, (np.array(["a"] * 3, dtype=object), y[:3]))


def test_saved_model_without_serving_default(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"probabilities": x},
                           input_signature=[tf.TensorSpec([None, 2], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"other": module.f})
    loaded = tf.saved_model.load(str(tmp_path))
    with pytest.raises(ValueError, match=r"no 'serving_default' signature.*\['other'\]"):
        evaluate(loaded, (np.eye(2, dtype="float32"), np.array([0, 1])))


def test_task_inferred_for_multilabel_and_regression():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 3)).astype("float32")
    multi_hot = (x[:, :2] > 0).astype("int64")
    tagger = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="sigmoid")])
    tagger.layers[0].set_weights([np.array([[3, 0], [0, 3], [0, 0]], "float32"),
                                  np.zeros(2, "float32")])
    report = evaluate(tagger, (x, multi_hot), class_names=["first", "second"])
    pred = (tagger.predict(x, verbose=0) >= 0.5).astype(int)
    assert report.task == "multilabel"
    assert report.metrics["hamming_loss"] == pytest.approx(skm.hamming_loss(multi_hot, pred))
    target = (x @ np.array([1.0, -2.0, 0.5])).astype("float32")
    regressor = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    regressor.layers[0].set_weights([np.array([[1.0], [-2.0], [0.0]], "float32"),
                                     np.zeros(1, "float32")])
    report = evaluate(regressor, (x, target))
    pred = regressor.predict(x, verbose=0)[:, 0]
    assert report.task == "regression"
    assert report.metrics["mae"] == pytest.approx(skm.mean_absolute_error(target, pred), rel=1e-5)
    assert report.metrics["r2"] == pytest.approx(skm.r2_score(target, pred), rel=1e-5)
