"""A quiet first run: no TensorFlow C++ start-up log from `tfft`, no warnings from tfft's calls."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import tfft
import tfft_cli

ROOT = Path(__file__).resolve().parents[2]

TF_STARTUP = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796224417.805483    6268 port.cc:153] oneDNN custom operations are on.
I0000 00:00:1796224417.876450    6268 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.
To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow.
/x/y.py:3: UserWarning: a warning of the user's own
E0000 00:00:1796224421.754396    6268 cuda_platform.cc:52] failed call to cuInit: ERROR (303)
F0000 00:00:1796224421.754396    6268 thing.cc:1] a fatal error
Traceback (most recent call last):"""


def test_startup_filter_drops_cpp_log_below_level_and_keeps_python_output():
    kept = tfft_cli._filter(TF_STARTUP.splitlines(), level=3)
    assert kept == [
        "/x/y.py:3: UserWarning: a warning of the user's own",
        "F0000 00:00:1796224421.754396    6268 thing.cc:1] a fatal error",
        "Traceback (most recent call last):",
    ]
    # TF_CPP_MIN_LOG_LEVEL=2 keeps errors; 0 keeps everything.
    assert any("cuInit" in line for line in tfft_cli._filter(TF_STARTUP.splitlines(), level=2))
    assert tfft_cli._filter(TF_STARTUP.splitlines(), level=0) == TF_STARTUP.splitlines()


def test_tfft_command_starts_without_tensorflow_cpp_log(tmp_path, startup_noise):
    # The installed `tfft` script calls tfft_cli.main; `tfft env` imports TensorFlow,
    # lists the devices (cuInit) and builds the auto strategy.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, tfft_cli; sys.exit(tfft_cli.main(['env']))"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "strategy (auto):" in proc.stdout
    assert startup_noise(proc.stderr) == [], proc.stderr


def test_fit_on_a_dataset_passes_no_ignored_shuffle_to_keras():
    # A Task with no preprocessor hands a tf.data.Dataset to Keras as it is; Task.fit's
    # default shuffle=True must not reach Keras, which warns that it ignores it.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    backbone = keras.Model(inputs, keras.layers.Dense(3, name="features")(inputs))
    task = tfft.build_model(backbone, num_classes=2, freeze="full")
    assert task.preprocessor is None
    data = tf.data.Dataset.from_tensor_slices(
        (np.random.rand(8, 4).astype("float32"), np.arange(8) % 2)
    ).batch(4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task.fit(data, epochs=1, verbose=0)
    assert [str(w.message) for w in caught if "shuffle" in str(w.message)] == []
