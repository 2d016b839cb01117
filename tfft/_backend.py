"""Selects the TensorFlow backend for Keras 3 before anything imports Keras.

tfft is built on TensorFlow (tf.data, tf.distribute, SavedModel export), so it
must run on Keras 3 with the TensorFlow backend. This module sets that up when
it can and explains what to change when the environment forces something else.
"""

import os
import sys

REQUIRED_BACKEND = "tensorflow"


class BackendError(ImportError):
    """Raised when the environment forces a Keras setup tfft cannot use."""


def ensure_tensorflow_backend():
    """Make Keras 3 run on TensorFlow, or raise a clear `BackendError`."""
    if os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes"):
        raise BackendError(
            "tfft needs Keras 3, but TF_USE_LEGACY_KERAS is set, which makes "
            "TensorFlow use legacy Keras 2 (tf_keras). Unset it, e.g. "
            "`os.environ.pop('TF_USE_LEGACY_KERAS')` before importing tensorflow, "
            "or `unset TF_USE_LEGACY_KERAS` in the shell."
        )
    requested = os.environ.get("KERAS_BACKEND")
    if requested and requested != REQUIRED_BACKEND:
        raise BackendError(
            "tfft runs Keras 3 on the TensorFlow backend, but KERAS_BACKEND="
            f"{requested!r} is set. Set KERAS_BACKEND=tensorflow (or unset it) "
            "before Python imports keras."
        )
    os.environ["KERAS_BACKEND"] = REQUIRED_BACKEND
    # Keeps TensorFlow's C++ start-up chatter out of progress output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    already_imported = "keras" in sys.modules
    import keras

    major = int(keras.__version__.split(".")[0])
    if major < 3:
        raise BackendError(
            f"tfft needs Keras 3, found keras {keras.__version__}. "
            "Install it with `pip install 'keras>=3.15,<3.16'`."
        )
    backend = keras.backend.backend()
    if backend != REQUIRED_BACKEND:
        hint = (
            "keras was imported before tfft with another backend; import tfft first "
            "or set KERAS_BACKEND=tensorflow"
            if already_imported
            else "set KERAS_BACKEND=tensorflow in the environment"
        )
        raise BackendError(
            f"tfft runs Keras 3 on the TensorFlow backend, but Keras is using "
            f"{backend!r}: {hint}."
        )
    return backend
