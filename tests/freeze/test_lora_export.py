import numpy as np
import tensorflow as tf

import tfft
from tfft.export import load_serving_outputs_in_fresh_process


def test_lora_model_exports_merged_kernels_with_the_same_outputs(tiny_text_backbone, tmp_path):
    model = tfft.build_model(tiny_text_backbone, num_classes=3, freeze="lora:2")
    texts = np.array(["the film was a star award", "bank shares profit market",
                      "election vote party minister"])
    tokens = tiny_text_backbone.preprocessor(texts)
    model.fit(tokens, np.array([0, 1, 2]), epochs=2, verbose=0)
    expected = model.predict(tokens, verbose=0)
    path = tfft.export_saved_model(model, str(tmp_path / "lora"), class_names=["a", "b", "c"],
                       sample_inputs=texts)
    got = load_serving_outputs_in_fresh_process(path, texts)
    assert np.max(np.abs(got["probabilities"] - expected)) <= 1e-5
    variables = [name for name, _ in tf.train.list_variables(f"{path}/variables/variables")]
    assert variables and not any("lora" in name for name in variables), variables[:5]
