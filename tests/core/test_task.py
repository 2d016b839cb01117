"""tfft.Task: typed parts, raw inputs, and `.keras` reloads in a fresh process (tiny models)."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft.adapt import lora_layers

from ..conftest import tiny_text_batch

TEXTS = [
    "the news of the game", "the market shares profit", "film music star award",
    "the team win the match", "bank profit and market", "a star of the film",
] * 3
LABELS = np.array([0, 1, 2, 0, 1, 2] * 3)
CLASSES = ["sport", "business", "entertainment"]


def _trainable_paths(model):
    return sorted(w.path for w in model.trainable_weights)


def test_build_model_returns_a_task_with_its_parts(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="top_k:1",
                            class_names=CLASSES)
    assert isinstance(task, tfft.Task) and isinstance(task, keras.Model)
    assert isinstance(task.backbone_layer, tfft.BackboneLayer)
    assert task.backbone is tiny_text_backbone.model
    assert task.preprocessor is tiny_text_backbone.preprocessor
    assert isinstance(task.head, tfft.TaskHead) and isinstance(task.pooling, tfft.Pooling)
    assert task.freeze_policy == tfft.TopK(1)
    assert task.task == "multiclass" and task.class_names == CLASSES
    assert task.backbone_info == tiny_text_backbone.info
    backbone = task.as_backbone()
    assert backbone.model is task.backbone and backbone.block_names


def test_class_names_must_match_the_head(tiny_text_backbone):
    with pytest.raises(ValueError, match="class_names has 2 names"):
        tfft.build_model(tiny_text_backbone, num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="binary head has 2 classes"):
        tfft.build_model(tiny_text_backbone, task="binary", num_classes=1, class_names=["a"])


def test_raw_strings_fit_predict_evaluate_like_preprocessed_inputs(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="full")
    before = task.predict(TEXTS, verbose=0)
    tokens = tiny_text_backbone.preprocessor(tf.constant(TEXTS))
    # Preprocessed dicts pass through unchanged: both paths see the same tensors.
    np.testing.assert_allclose(before, task.predict(tokens, verbose=0), atol=1e-6)
    history = task.fit(TEXTS, LABELS, epochs=3, batch_size=6, verbose=0,
                       validation_data=(TEXTS[:6], LABELS[:6]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_loss" in history.history
    after = task.predict(TEXTS, verbose=0)
    assert after.shape == (len(TEXTS), 3) and not np.allclose(after, before)
    loss, _ = task.evaluate(TEXTS, LABELS, verbose=0)
    ds_loss, _ = task.evaluate(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(5),
                               verbose=0)
    assert np.isclose(loss, ds_loss, rtol=1e-5)


def test_tf_data_of_raw_strings_is_preprocessed_in_the_pipeline(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3)
    raw = tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4)
    mapped = task.make_dataset(raw)
    # tfft's pipeline options where the user's dataset set none (no autotuning).
    assert mapped.options().autotune.enabled is False
    x, y = next(iter(mapped))
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    assert x["token_ids"].dtype == tf.int32 and y.shape == (4,)
    history = task.fit(raw, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_datasets_share_one_preprocessor_trace_until_its_config_changes(new_tiny_text_backbone,
                                                                        tiny_tokenizer):
    import keras_hub

    backbone = new_tiny_text_backbone()
    # Its own preprocessor: this test changes it.
    backbone.preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tiny_tokenizer, sequence_length=16)
    task = tfft.build_model(backbone, num_classes=3)
    task.trim_batches = False  # batches as the preprocessor pads them
    preprocessor, traces = backbone.preprocessor, []
    want = preprocessor(tf.constant(TEXTS))
    call = preprocessor.call

    def counted(*args, **kwargs):
        traces.append(1)  # Python runs once per trace
        return call(*args, **kwargs)

    preprocessor.call = counted
    first = task.make_dataset(TEXTS, LABELS, batch_size=4)
    second = task.make_dataset(TEXTS[:5], batch_size=2)
    labelled = task.make_dataset(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(3))
    assert len(traces) == 1
    x, y = next(iter(first))
    np.testing.assert_array_equal(x["token_ids"], want["token_ids"][:4])
    np.testing.assert_array_equal(y, LABELS[:4])
    np.testing.assert_array_equal(next(iter(second))["token_ids"], want["token_ids"][:2])
    np.testing.assert_array_equal(next(iter(labelled))[0]["padding_mask"],
                                  want["padding_mask"][:3])
    # A new sequence length is a new config: traced again, and used.
    backbone.preprocessor.sequence_length = 8
    x = next(iter(task.make_dataset(TEXTS, batch_size=4)))
    assert len(traces) == 2 and x["token_ids"].shape == (4, 8)


def test_a_preprocessor_without_a_config_is_mapped_as_it_is(new_tiny_text_backbone):
    class NoConfig(keras.layers.Layer):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def call(self, x):
            return self.inner(x)

        def get_config(self):
            raise NotImplementedError("no config")

    backbone = new_tiny_text_backbone()
    inner = backbone.preprocessor
    backbone.preprocessor = NoConfig(inner)
    task = tfft.build_model(backbone, num_classes=3)
    task.trim_batches = False  # batches as the preprocessor pads them
    x = next(iter(task.make_dataset(TEXTS, batch_size=4)))
    np.testing.assert_array_equal(x["token_ids"], inner(tf.constant(TEXTS[:4]))["token_ids"])


def test_validation_split_on_raw_inputs_holds_out_the_tail(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3)
    history = task.fit(TEXTS, LABELS, validation_split=0.25, epochs=1, verbose=0)
    assert "val_loss" in history.history
    with pytest.raises(ValueError, match="validation_split"):
        task.fit(tf.data.Dataset.from_tensor_slices((TEXTS, LABELS)).batch(4),
                 validation_split=0.2, verbose=0)


def test_without_a_preprocessor_the_task_takes_preprocessed_inputs(tiny_bert, text_batch):
    task = tfft.build_model(tiny_bert, num_classes=2)
    assert task.preprocessor is None
    assert task.predict(text_batch, verbose=0).shape == (16, 2)


def test_freeze_records_the_policy_and_sets_flags(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3)
    head_only = _trainable_paths(task)
    policy = task.freeze("top_k:2")
    assert task.freeze_policy == policy == tfft.TopK(2)
    assert len(_trainable_paths(task)) > len(head_only)
    tfft.apply_freeze(task, "feature_extraction")
    assert task.freeze_policy == tfft.FeatureExtraction()
    assert _trainable_paths(task) == head_only


def test_keras_reload_in_a_fresh_process_restores_the_task(new_tiny_text_backbone, tiny_cnn,
                                                           reload_in_fresh_process):
    # Five tasks, one fresh process (one TensorFlow start): three freeze policies on
    # their own text backbones, LoRA adapters, and an image task with its preprocessor.
    tasks = {}
    for freeze in ["top_k:1", "gradual:2", "regex:transformer_layer_2"]:
        task = tfft.build_model(new_tiny_text_backbone(), num_classes=3, freeze=freeze,
                                class_names=CLASSES)
        task.fit(TEXTS, LABELS, epochs=1, verbose=0)
        tasks[freeze] = task
    lora = tfft.build_model(new_tiny_text_backbone(), num_classes=3, freeze="lora:2")
    lora.fit(TEXTS, LABELS, epochs=2, verbose=0)
    adapted = lora_layers(lora.backbone)
    assert adapted and any(np.any(layer.lora_kernel_b.numpy()) for layer in adapted)
    image, images = _image_task(tiny_cnn)
    reloaded = reload_in_fresh_process.many(
        [(task, np.asarray(TEXTS)) for task in tasks.values()]
        + [(lora, np.asarray(TEXTS)), (image, images)])
    for (freeze, task), (got, described) in zip(tasks.items(), reloaded[:3], strict=True):
        assert described["type"] == "Task", freeze
        np.testing.assert_allclose(got, task.predict(TEXTS, verbose=0), atol=1e-6,
                                   err_msg=freeze)
        assert described["trainable"] == _trainable_paths(task), freeze
        assert described["freeze_policy"] == task.freeze_policy.to_dict(), freeze
        assert described["class_names"] == CLASSES, freeze
        assert described["backbone_info"] == task.backbone_info.to_dict(), freeze
        assert described["preprocessor"] == type(task.preprocessor).__name__, freeze

    # LoRA: Keras alone would reload merged kernels with zero adapters; the task keeps them.
    got, described = reloaded[3]
    np.testing.assert_allclose(got, lora.predict(TEXTS, verbose=0), atol=1e-6)
    assert len(described["lora_b"]) == len(adapted)
    for saved, layer in zip(described["lora_b"], adapted, strict=True):
        np.testing.assert_allclose(saved, layer.lora_kernel_b.numpy(), atol=0)
    assert described["trainable"] == _trainable_paths(lora)
    assert described["freeze_policy"] == {"policy": "lora", "rank": 2, "alpha": None,
                                          "target": None}

    # The image task: raw uint8 images of another size go through its ImagePreprocessor.
    got, described = reloaded[4]
    np.testing.assert_allclose(got, image.predict(images, verbose=0), atol=1e-6)
    assert described["preprocessor"] == "ImagePreprocessor"
    assert described["trainable"] == _trainable_paths(image)


def _image_task(tiny_cnn):
    preprocessor = tfft.ImagePreprocessor((32, 32), scale=1 / 127.5, offset=-1.0)
    backbone = tfft.load_backbone(tiny_cnn)
    backbone.preprocessor = preprocessor
    task = tfft.build_model(backbone, num_classes=2, freeze="top_k:1", class_names=["a", "b"])
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3)).astype("uint8")
    return task, images


def test_image_task_predicts_through_its_preprocessor(tiny_cnn):
    task, images = _image_task(tiny_cnn)
    np.testing.assert_allclose(
        task.predict(images, verbose=0),
        task.to_sequential().predict(task.preprocessor(images), verbose=0), atol=1e-6,
    )


def test_lora_training_goes_on_after_a_reload(tiny_text_backbone, tmp_path):
    task = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="lora:2")
    task.fit(TEXTS, LABELS, epochs=1, verbose=0)
    path = str(tmp_path / "lora.keras")
    task.save(path)
    reloaded = keras.saving.load_model(path)
    frozen = {w.path: w.numpy().copy() for w in reloaded.backbone.weights if not w.trainable}
    b_before = [layer.lora_kernel_b.numpy().copy() for layer in lora_layers(reloaded.backbone)]
    reloaded.fit(TEXTS, LABELS, epochs=1, verbose=0)
    for w in reloaded.backbone.weights:
        if w.path in frozen:
            np.testing.assert_array_equal(w.numpy(), frozen[w.path])
    b_after = [layer.lora_kernel_b.numpy() for layer in lora_layers(reloaded.backbone)]
    assert any(not np.array_equal(a, b) for a, b in zip(b_before, b_after, strict=True))


def test_merged_lora_task_is_a_plain_task_with_the_same_outputs(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="lora:2")
    task.fit(TEXTS, LABELS, epochs=1, verbose=0)
    plain = tfft.merge_lora(task)
    assert isinstance(plain, tfft.Task) and not lora_layers(plain.backbone)
    assert plain.preprocessor is task.preprocessor and plain.freeze_policy is None
    np.testing.assert_allclose(plain.predict(TEXTS, verbose=0), task.predict(TEXTS, verbose=0),
                               atol=1e-5)


def test_batch_methods_take_raw_inputs(tiny_text_backbone):
    task = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="full")
    tokens = tiny_text_backbone.preprocessor(tf.constant(TEXTS[:6]))
    np.testing.assert_allclose(task.predict_on_batch(TEXTS[:6]),
                               task.predict_on_batch(tokens), atol=1e-6)
    raw_loss = task.test_on_batch(TEXTS[:6], LABELS[:6])[0]
    assert np.isclose(raw_loss, task.test_on_batch(tokens, LABELS[:6])[0], rtol=1e-6)
    before = task.head.output_layer.kernel.numpy().copy()
    task.train_on_batch(TEXTS[:6], LABELS[:6])
    assert not np.array_equal(task.head.output_layer.kernel.numpy(), before)


def test_evaluate_takes_labeled_data_of_raw_inputs(tiny_text_backbone):
    from tfft.data import LabeledData

    task = tfft.build_model(tiny_text_backbone, num_classes=3, class_names=CLASSES)
    data = LabeledData(np.asarray(TEXTS), LABELS, CLASSES)
    report = tfft.evaluate(task, data)
    expected = tfft.report_from_predictions(LABELS, task.predict(TEXTS, verbose=0),
                                            class_names=CLASSES)
    assert report["accuracy"] == expected["accuracy"]
    assert report["macro_f1"] == expected["macro_f1"]


def _bucketed(backbone):
    return tfft.data.make_text_dataset((TEXTS, LABELS), backbone=backbone, batch_size=4,
                                       bucketing=True, shuffle=True, seed=3, pool_batches=2)


def test_fit_trains_every_epoch_from_one_pipeline_on_the_same_batches(new_tiny_text_backbone):
    """One repeated pipeline for all epochs trains as Keras' iterator per epoch does."""

    def train(**kwargs):
        keras.utils.set_random_seed(0)
        backbone = new_tiny_text_backbone()
        task = tfft.build_model(backbone, num_classes=3, freeze="full")
        # A new dataset each run: its reshuffling seed advances with every pass.
        history = task.fit(_bucketed(backbone), epochs=3, verbose=0, **kwargs)
        return history.history["loss"], [w.numpy() for w in task.weights]

    continuous = train()
    # An explicit steps_per_epoch leaves the dataset as it is: Keras makes an
    # iterator per epoch, as it did before.
    keras_own = train(steps_per_epoch=int(_bucketed(new_tiny_text_backbone()).cardinality()))
    np.testing.assert_allclose(continuous[0], keras_own[0], rtol=1e-6)
    for a, b in zip(continuous[1], keras_own[1], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("continuous", [True, False], ids=["one_pipeline", "steps_given"])
def test_fit_prepares_the_next_epoch_while_the_last_batches_train(tiny_bert, continuous):
    events = []
    features = {k: tf.constant(v) for k, v in tiny_text_batch(n=8).items()}

    def made(i):
        events.append(("made", int(i)))
        return i

    def example(i):
        i = tf.py_function(made, [i], tf.int64)
        i.set_shape(())
        return {k: tf.gather(v, i) for k, v in features.items()}, i % 2

    dataset = tf.data.Dataset.range(8).map(example).batch(4)

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            events.append(("trained", batch))
            time.sleep(0.1)  # a slower step: time for the pipeline to run ahead

    task = tfft.build_model(tiny_bert, num_classes=2)
    kwargs = {} if continuous else {"steps_per_epoch": 2}
    task.fit(dataset, epochs=2, verbose=0, callbacks=[Record()], **kwargs)
    # Ninth example made: the second pass's first; the second event "trained" is
    # the first epoch's last batch.
    ninth = [i for i, event in enumerate(events) if event[0] == "made"][8]
    first_epoch_end = [i for i, event in enumerate(events) if event[0] == "trained"][1]
    assert (ninth < first_epoch_end) is continuous
