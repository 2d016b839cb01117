import os
import subprocess
import sys

import pytest


def _import_tfft(env_overrides):
    env = {**os.environ, **env_overrides}
    return subprocess.run(
        [sys.executable, "-c", "import tfft"], capture_output=True, text=True, env=env,
        timeout=300,
    )


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"KERAS_BACKEND": "jax"}, "KERAS_BACKEND='jax'"),
        ({"TF_USE_LEGACY_KERAS": "1"}, "TF_USE_LEGACY_KERAS"),
    ],
)
def test_foreign_backend_or_legacy_keras_is_refused_clearly(env, expected):
    proc = _import_tfft(env)
    assert proc.returncode != 0
    assert "BackendError" in proc.stderr
    assert expected in proc.stderr
    assert "tensorflow" in proc.stderr.lower()


def test_backend_already_set_to_tensorflow_is_fine():
    proc = _import_tfft({"KERAS_BACKEND": "tensorflow"})
    assert proc.returncode == 0, proc.stderr[-1000:]
