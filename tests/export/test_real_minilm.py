"""End to end on the real offline all-MiniLM-L6-v2: cached head training, then export."""

import numpy as np
import pytest
import tensorflow as tf

from tfft.export import export_saved_model
from tfft.export.saved_model import read_metadata
from tfft.models import build_model
from tfft.training import feature_cache


@pytest.mark.slow
def test_minilm_cached_head_then_serving_export(minilm, bbc, tmp_path):
    rng = np.random.default_rng(0)
    idx = rng.choice(len(bbc), 40, replace=False)
    x, y = bbc.x[idx], bbc.y[idx]
    model = build_model(minilm, task="multiclass", num_classes=len(bbc.class_names),
                        compile=False)

    def make_ds(texts):
        return model.make_dataset(texts, batch_size=16)

    history = feature_cache.fit_cached(model, x[:30], y[:30], (x[30:], y[30:]),
                                       make_dataset=make_ds, epochs=2, batch_size=16,
                                       directory=str(tmp_path / "cache"), verbose=0)
    assert history.cache_hits == (False, False)
    # The XLA-compiled export (the default one is the main job's, tests/jobs); verified
    # against the in-memory model in a fresh process inside.
    path = export_saved_model(model, str(tmp_path / "bbc"), class_names=bbc.class_names,
                              sample_inputs=[str(t) for t in x[30:34]], jit_compile=True)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    texts = [str(t)[:500] for t in x[34:]]
    got = serve(tf.constant(texts))
    want = model.predict(make_ds(np.array(texts)), verbose=0)
    np.testing.assert_allclose(got["probabilities"].numpy(), want, atol=1e-5)
    assert [n.decode() for n in got["class_names"].numpy()] == [
        bbc.class_names[i] for i in want.argmax(-1)]
    meta = read_metadata(path)
    assert meta["backbone"]["spec"] == "keras_hub:all_minilm_l6_v2"
    assert meta["preprocessing"]["sequence_length"] == 64
    assert meta["jit_compile"] is True
