"""Image export of a real pretrained CNN, served in a fresh process on real photos.

EfficientNet-Lite0's ImageNet classifier (the offline PyTorch checkpoint
converted through KerasHub) is exported with `tfft.export_saved_model`; a new
Python process that imports only TensorFlow loads the SavedModel and calls
`serving_default` on PNG and JPEG bytes of skimage's photos. Its answers must
equal the Keras model's on the same decoded pixels, and name the right
ImageNet classes (a cat, an espresso).
"""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import tfft

pytestmark = pytest.mark.slow

CLASS_NAMES = [f"imagenet_{i}" for i in range(1000)]
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # four sizes, none 224 px

_SERVE_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf

path, inputs_file, out_file = sys.argv[1:4]
with np.load(inputs_file) as data:
    blobs = [bytes(b[:n]) for b, n in zip(data["blobs"], data["lengths"])]
serve = tf.saved_model.load(path).signatures["serving_default"]
[name] = serve.structured_input_signature[1]
outputs = serve(**{name: tf.constant(blobs)})
np.savez(out_file, probabilities=outputs["probabilities"].numpy(),
         class_ids=outputs["class_ids"].numpy(),
         class_names=outputs["class_names"].numpy().astype(str))
print(json.dumps({"input": name, "modules": sorted(m for m in ("tfft", "keras_hub")
                                                   if m in sys.modules)}))
"""


def _serve_in_fresh_process(path, blobs, tmp_path):
    inputs_file, out_file = tmp_path / "inputs.npz", tmp_path / "outputs.npz"
    np.savez(inputs_file, blobs=np.array(blobs, dtype=bytes),
             lengths=np.array([len(b) for b in blobs]))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, path, str(inputs_file), str(out_file)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    described = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(out_file) as data:
        return {k: data[k] for k in data.files}, described


def _encode(image, fmt):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, preprocessor = tfft.load_imagenet_classifier("efficientnet_lite0")
    directory = tmp_path_factory.mktemp("export") / "lite0"
    # The test below is the fresh-process check, so export's own is skipped.
    path = tfft.export_saved_model(model, str(directory), preprocessor=preprocessor,
                                   class_names=CLASS_NAMES, task="multiclass",
                                   modality="image", verify=False)
    return model, preprocessor, path


def test_exported_lite0_agrees_with_keras_on_real_photos_in_a_fresh_process(exported,
                                                                            tmp_path):
    from skimage import data

    model, preprocessor, path = exported
    photos = [getattr(data, name)() for name in PHOTOS]
    pngs = [_encode(photo, "PNG") for photo in photos]
    jpegs = [_encode(photo, "JPEG") for photo in photos]
    got, described = _serve_in_fresh_process(path, pngs + jpegs, tmp_path)
    # The server needs TensorFlow only: no tfft, no KerasHub in the serving process.
    assert described == {"input": "inputs", "modules": []}

    def keras_probabilities(images):
        return np.concatenate([np.asarray(model(preprocessor(image[None]), training=False))
                               for image in images])

    # PNG is lossless: the Keras model on the original pixels.
    want_png = keras_probabilities(photos)
    np.testing.assert_allclose(got["probabilities"][:4], want_png, atol=1e-5)
    # JPEG: the Keras model on the same bytes decoded by TensorFlow's decoder, which
    # the server uses too (PIL's decoder differs by a grey level here and there).
    decoded = [tf.io.decode_jpeg(blob, channels=3).numpy() for blob in jpegs]
    assert all(d.shape == p.shape for d, p in zip(decoded, photos, strict=True))
    want_jpeg = keras_probabilities(decoded)
    np.testing.assert_allclose(got["probabilities"][4:], want_jpeg, atol=1e-5)
    ids = got["class_ids"].tolist()
    assert ids == np.concatenate([want_png, want_jpeg]).argmax(-1).tolist()
    assert got["class_names"].tolist() == [CLASS_NAMES[i] for i in ids]
    # Real answers: 285 Egyptian cat, 967 espresso, from PNG and JPEG alike; the four
    # photos get four different classes, so a constant output would not pass. (The
    # rocket's top classes are close, missile vs projectile: JPEG may swap them.)
    assert ids[0] == ids[4] == 285 and ids[1] == ids[5] == 967 and ids[2] == ids[6]
    assert len(set(ids[:4])) == 4
    # JPEG compression moves the probabilities only a little.
    np.testing.assert_allclose(got["probabilities"][4:], got["probabilities"][:4], atol=0.05)
