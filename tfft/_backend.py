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


def check_environment() -> None:
    """Selects TensorFlow for Keras, or raises a clear `BackendError`; cheap.

    Runs at `import tfft`. It reads the environment and sets
    `KERAS_BACKEND=tensorflow` without importing Keras, so `import tfft` stays
    fast; Keras reads the setting whenever a tfft module first imports it.
    When Keras was imported before tfft, its backend is checked at once.
    """
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
    if "keras" in sys.modules:
        ensure_tensorflow_backend(imported_before_tfft=True)


def ensure_tensorflow_backend(imported_before_tfft: bool = False) -> str:
    """Imports Keras and checks it is Keras 3 on TensorFlow; returns the backend name."""
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
            if imported_before_tfft
            else "set KERAS_BACKEND=tensorflow in the environment"
        )
        raise BackendError(
            f"tfft runs Keras 3 on the TensorFlow backend, but Keras is using "
            f"{backend!r}: {hint}."
        )
    return backend
