"""A dataset `Task.make_dataset` returned is preprocessed once, also for images."""

import numpy as np

import tfft


def test_predict_on_its_own_image_dataset_preprocesses_once(tiny_cnn):
    backbone = tfft.load_backbone(tiny_cnn)
    backbone.preprocessor = tfft.ImagePreprocessor((32, 32), scale=1 / 127.5, offset=-1.0)
    task = tfft.build_model(backbone, num_classes=2, freeze="feature_extraction")
    images = np.random.default_rng(0).integers(0, 256, (6, 40, 48, 3)).astype("uint8")
    direct = task.predict(images, verbose=0)
    made = task.make_dataset(images, batch_size=3)
    np.testing.assert_allclose(task.predict(made, verbose=0), direct, atol=1e-6)
    assert task.make_dataset(made) is made
    labelled = task.make_dataset(images, np.arange(6) % 2, batch_size=3)
    # tf.data's autotuning thread stalled the end of `fit` (tfft.data.pipeline_options).
    assert labelled.options().autotune.enabled is False
    loss = task.evaluate(labelled, verbose=0, return_dict=True)["loss"]
    want = task.evaluate(images, np.arange(6) % 2, verbose=0, return_dict=True)["loss"]
    np.testing.assert_allclose(loss, want, rtol=1e-5)
