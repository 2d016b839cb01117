"""tfft.distribute: tf.distribute strategies, TF_CONFIG, batching, chief-only writes.

Real engines throughout: MirroredStrategy over two logical CPUs and
MultiWorkerMirroredStrategy over two processes on 127.0.0.1 run in fresh
processes (devices must be configured before TensorFlow starts), each against
a model built by `tfft.build_model`.
"""

import contextlib
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfft
from tfft import distribute
from tfft.distribute import StrategyError
from tfft.distribute import strategy as strategy_lib

HERE = os.path.dirname(os.path.abspath(__file__))
TWO_WORKERS = {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}


def tf_config(cluster, task_type, index):
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


def script_env():
    env = dict(os.environ)
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(HERE))] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    return env


def run_script(name, *args, timeout=240):
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, name), *map(str, args)],
        env=script_env(), capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


@pytest.fixture
def no_cluster(monkeypatch):
    for name in ("TF_CONFIG", "TPU_NAME", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE",
                 "TPU_WORKER_ID"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------- TF_CONFIG


@pytest.mark.parametrize("value, message", [
    ("{not json", "not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    (json.dumps({"task": {"type": "worker", "index": 0}}), "missing ['cluster']"),
    (json.dumps({"cluster": TWO_WORKERS}), "missing ['task']"),
    (json.dumps({"cluster": {}, "task": {"type": "worker", "index": 0}}), "non-empty object"),
    (tf_config(TWO_WORKERS, "worker", 2), "valid indices are 0..1"),
    (tf_config(TWO_WORKERS, "worker", -1), "out of range"),
    (tf_config(TWO_WORKERS, "worker", "0"), "must be an integer"),
    (tf_config(TWO_WORKERS, "master", 0), "Unknown task type"),
    (tf_config({"boss": ["h:1"]}, "worker", 0), "Unknown task type 'boss'"),
    (tf_config(TWO_WORKERS, "chief", 0), "has no 'chief' tasks"),
    (tf_config({"worker": ["localhost"]}, "worker", 0), "must be 'host:port'"),
    (tf_config({"worker": []}, "worker", 0), "non-empty list"),
    (tf_config({"chief": ["a:1", "b:1"]}, "chief", 0), "at most one chief"),
    (json.dumps({"cluster": TWO_WORKERS, "task": {"type": "worker"}}), "'type' and 'index'"),
])
def test_malformed_tf_config_is_a_clear_error(value, message):
    with pytest.raises(StrategyError, match="TF_CONFIG") as info:
        distribute.parse_tf_config(value)
    assert message in str(info.value)


def test_valid_tf_config(no_cluster, monkeypatch):
    assert distribute.parse_tf_config() is None
    monkeypatch.setenv("TF_CONFIG", "   ")
    assert distribute.parse_tf_config() is None
    config = distribute.parse_tf_config(tf_config(TWO_WORKERS, "worker", 1))
    assert config["task"] == {"type": "worker", "index": 1}
    # An evaluator runs beside the cluster without being listed in it.
    assert distribute.parse_tf_config(tf_config(TWO_WORKERS, "evaluator", 0))


def test_get_strategy_rejects_bad_settings_before_any_work(no_cluster, monkeypatch):
    with pytest.raises(StrategyError, match=r"Unknown strategy.*Received: name='tpus'"):
        distribute.get_strategy("tpus")
    with pytest.raises(StrategyError, match="only applies to name='mirrored'"):
        distribute.get_strategy("cpu", devices=["/cpu:0"])
    with pytest.raises(StrategyError, match="non-empty list"):
        distribute.get_strategy("mirrored", devices="/cpu:0")
    with pytest.raises(StrategyError, match="only applies to name='tpu' or 'auto'"):
        distribute.get_strategy("gpu", tpu="local")
    for timeout in (0, -1.0, float("inf"), True, "60"):
        with pytest.raises(StrategyError, match="timeout must be a positive number"):
            distribute.get_strategy("tpu", timeout=timeout)
    monkeypatch.setenv("TF_CONFIG", tf_config(TWO_WORKERS, "worker", 5))
    for name in ("auto", "multi_worker", "cpu"):
        with pytest.raises(StrategyError, match="out of range"):
            distribute.get_strategy(name, verbose=False)


# ------------------------------------------------------------------------- choice


def test_auto_on_this_cpu_machine_says_what_it_chose(no_cluster, capsys):
    strategy = strategy_lib.get_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    out = capsys.readouterr().out
    assert "default strategy with 1 replica(s)" in out
    assert "no TPU" in out and "no GPU" in out
    assert strategy_lib.get_strategy("auto", verbose=False) is strategy
    assert capsys.readouterr().out == ""


def test_explicit_cpu_default_and_mirrored(no_cluster, capsys):
    assert strategy_lib.get_strategy("cpu").num_replicas_in_sync == 1
    assert strategy_lib.get_strategy("default") is tf.distribute.get_strategy()
    mirrored = strategy_lib.get_strategy("mirrored", devices=["/cpu:0"])
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    assert "MirroredStrategy with 1 replica(s)" in capsys.readouterr().out


def test_gpu_without_a_gpu_is_a_clear_error(no_cluster):
    with pytest.raises(StrategyError, match="needs a GPU, but TensorFlow sees none"):
        strategy_lib.get_strategy("gpu")


def test_tpu_without_a_tpu_is_a_clear_error(no_cluster, monkeypatch):
    # The detection boundary: no TPU device files on this machine.
    monkeypatch.setattr(strategy_lib.glob, "glob", lambda pattern: [])
    assert strategy_lib.detect_tpu()[0] is False
    with pytest.raises(StrategyError, match="No TPU is reachable") as info:
        strategy_lib.get_strategy("tpu")
    assert "tpu='local'" in str(info.value) and "get_strategy('auto')" in str(info.value)


def test_tpu_detection_reads_environment_and_devices(no_cluster, monkeypatch):
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert strategy_lib.detect_tpu()[0] == "grpc://10.0.0.2:8470"
    monkeypatch.delenv("COLAB_TPU_ADDR")
    monkeypatch.setenv("TPU_NAME", "my-tpu")
    assert strategy_lib.detect_tpu()[0] is None  # the resolver reads TPU_NAME itself
    monkeypatch.delenv("TPU_NAME")
    monkeypatch.setattr(strategy_lib.glob, "glob",
                        lambda p: ["/dev/accel0", "/dev/accel1"] if "accel" in p else [])
    assert strategy_lib.detect_tpu() == ("local", "TPU device files ['/dev/accel0', '/dev/accel1']")


def _find_spec_with_libtpu(installed):
    """`importlib.util.find_spec` that answers for `libtpu` as told."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "libtpu":
            return object() if installed else None
        return real(name, *args, **kwargs)

    return find_spec


# Other passthrough devices use vfio too: vfio alone is no TPU, vfio plus a TPU sign is.
@pytest.mark.parametrize("libtpu, env, expected", [
    (False, {}, False),
    (True, {}, "local"),
    (False, {"TPU_ACCELERATOR_TYPE": "v5litepod-8"}, "local"),
    (False, {"TPU_WORKER_ID": "0"}, "local"),
])
def test_vfio_devices_are_a_tpu_only_beside_a_tpu_sign(no_cluster, monkeypatch, libtpu, env,
                                                       expected):
    monkeypatch.setattr(strategy_lib.glob, "glob",
                        lambda p: ["/dev/vfio/0", "/dev/vfio/vfio"] if "vfio" in p else [])
    monkeypatch.setattr(strategy_lib.importlib.util, "find_spec", _find_spec_with_libtpu(libtpu))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    tpu, reason = strategy_lib.detect_tpu()
    assert tpu == expected
    assert ("vfio devices ['/dev/vfio/0']" in reason) is (expected == "local"), reason


def test_real_tpu_resolver_fails_fast_and_auto_falls_back():
    """tpu='local' really goes through TPUClusterResolver and initialize_tpu_system."""
    out = run_script("tpu_script.py", timeout=180)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["explicit"].startswith("Could not connect to the TPU 'local'")
    assert "TPUs not found" in result["explicit"]
    assert result["auto_type"] == "_DefaultDistributionStrategy"
    assert result["auto_replicas"] == 1
    assert "could not be used; falling back to GPUs/CPU" in out
    assert "the indicated TPU failed to start" in out


# ------------------------------------------------------------------------- helpers


def test_batch_and_learning_rate_helpers_on_one_replica(no_cluster):
    one = tf.distribute.MirroredStrategy(["/cpu:0"])
    assert distribute.global_batch_size(32, one) == 32
    assert distribute.per_replica_batch_size(7, one) == 7
    assert distribute.scale_learning_rate(0.1, one) == pytest.approx(0.1)
    assert distribute.scale_learning_rate(0.1, one, base_replicas=4) == pytest.approx(0.025)
    with pytest.raises(StrategyError, match="positive integer"):
        distribute.global_batch_size(0, one)
    with pytest.raises(StrategyError, match="positive integer"):
        distribute.global_batch_size(True, one)
    with pytest.raises(StrategyError, match=r"Unknown learning-rate scaling rule.*'cube'"):
        distribute.scale_learning_rate(0.1, one, rule="cube")
    with pytest.raises(StrategyError, match="learning_rate must be a positive"):
        distribute.scale_learning_rate(-1.0, one)


def test_distribute_dataset_sets_data_sharding_and_batches(no_cluster):
    ds = tf.data.Dataset.from_tensor_slices((np.arange(10), np.arange(10)))
    out = distribute.distribute_dataset(ds, global_batch_size=4, drop_remainder=True)
    policy = out.options().experimental_distribute.auto_shard_policy
    assert policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [b[0].numpy().tolist() for b in out] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    files = distribute.distribute_dataset(ds.batch(2), shard_policy="file")
    assert (files.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.FILE)
    one = tf.distribute.MirroredStrategy(["/cpu:0"])
    distributed = distribute.distribute_dataset(ds, one, global_batch_size=5, distribute=True)
    assert isinstance(distributed, tf.distribute.DistributedDataset)
    assert [one.experimental_local_results(b[1])[0].numpy().tolist() for b in distributed] == [
        [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    with pytest.raises(StrategyError, match="Unknown shard policy"):
        distribute.distribute_dataset(ds, shard_policy="rows")
    with pytest.raises(TypeError, match=r"expects a tf.data.Dataset"):
        distribute.distribute_dataset(np.arange(10))


@pytest.mark.parametrize("cluster, task_type, index, chief", [
    (None, None, None, True),
    (TWO_WORKERS, "worker", 0, True),
    (TWO_WORKERS, "worker", 1, False),
    ({"chief": ["h:1"], **TWO_WORKERS}, "chief", 0, True),
    ({"chief": ["h:1"], **TWO_WORKERS}, "worker", 0, False),
    (TWO_WORKERS, "evaluator", 0, False),
])
def test_is_chief_and_chief_only_writes(no_cluster, monkeypatch, tmp_path, cluster, task_type,
                                         index, chief):
    if cluster is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config(cluster, task_type, index))
    assert distribute.is_chief() is chief
    wanted = str(tmp_path / "export")
    with distribute.chief_writes(wanted) as target:
        os.makedirs(target)
        with open(os.path.join(target, "weights"), "w") as f:
            f.write("x")
    assert (target == wanted) is chief
    assert os.path.basename(target) == "export"
    assert os.path.exists(os.path.join(wanted, "weights")) is chief
    # A worker's scratch copy is gone afterwards.
    assert os.path.exists(target) is chief


def test_build_model_under_a_strategy(no_cluster):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])

    def cnn():
        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))

    outside = cnn()
    with pytest.raises(StrategyError, match="created outside the scope"):
        tfft.build_model(outside, num_classes=3, strategy=strategy)
    with strategy.scope():
        inside = cnn()
    model = tfft.build_model(inside, num_classes=3, strategy=strategy)
    assert model.distribute_strategy is strategy
    assert all(isinstance(w._value, tf.distribute.DistributedValues) for w in model.weights)
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
    model.fit(x, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    # Inside `with strategy.scope():` the same checks apply without strategy=.
    with strategy.scope():
        with pytest.raises(StrategyError, match="created outside the scope"):
            tfft.build_model(outside, num_classes=3)
        again = tfft.build_model(cnn(), num_classes=3)
    assert again.distribute_strategy is strategy


# ------------------------------------------------------------------------- real engines


def test_mirrored_on_two_cpus_matches_one_device(tmp_path):
    run_script("mirrored_script.py", tmp_path, "cnn,bert")
    for kind in ("cnn", "bert"):
        data = np.load(tmp_path / f"{kind}.npz")
        assert int(data["replicas"]) == 2
        assert str(data["variable_type"]) == "MirroredVariable"
        count = sum(1 for key in data.files if key.startswith("single_"))
        assert count >= 6
        moved = max(np.abs(data[f"single_{i}"] - data[f"initial_{i}"]).max()
                    for i in range(count))
        assert moved > 1e-3, f"{kind}: training did not change the weights"
        for i in range(count):
            np.testing.assert_allclose(data[f"mirrored_{i}"], data[f"single_{i}"],
                                       rtol=1e-5, atol=1e-5, err_msg=f"{kind} weight {i}")
    checks = json.loads((tmp_path / "checks.json").read_text())
    assert checks["global_batch"] == 16 and checks["per_replica"] == 8
    assert checks["lr_linear"] == pytest.approx(0.2)
    assert checks["lr_sqrt"] == pytest.approx(0.1 * 2 ** 0.5)
    assert checks["lr_none"] == pytest.approx(0.1)
    for name in ("odd_global", "odd_dataset", "odd_batching"):
        assert checks[name] and "divide evenly across the 2 replicas" in checks[name], name


def train_multi_worker_model_on_one_process(global_batch, monkeypatch):
    """The multi-worker script's model and data, trained here on the default strategy.

    Returns the model and its weights before training.
    """
    spec = importlib.util.spec_from_file_location(
        "multi_worker_script", os.path.join(HERE, "multi_worker_script.py"))
    script = importlib.util.module_from_spec(spec)
    # AutoGraph looks the dataset's map function up by its module.
    monkeypatch.setitem(sys.modules, spec.name, script)
    spec.loader.exec_module(script)
    strategy = tf.distribute.get_strategy()
    model, preprocessor = script.build_model(strategy)
    initial = model.get_weights()
    model.fit(script.dataset(preprocessor, strategy, global_batch), epochs=1, verbose=0)
    return model, initial


@pytest.mark.slow
def test_multi_worker_two_processes_end_identical_and_chief_exports(tmp_path, monkeypatch,
                                                                    free_ports):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    procs = []
    for index in range(2):
        env = script_env()
        env["TF_CONFIG"] = tf_config(cluster, "worker", index)
        log = open(tmp_path / f"log{index}.txt", "w")  # noqa: SIM115  closed in the finally below
        procs.append((subprocess.Popen(
            [sys.executable, os.path.join(HERE, "multi_worker_script.py"), str(tmp_path)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        ), log))
    try:
        # The reference run, while the workers start: one process, the same model, data,
        # seed and global batch (2 per replica x 2 replicas).
        single, initial = train_multi_worker_model_on_one_process(4, monkeypatch)
        codes = [proc.wait(timeout=240) for proc, _ in procs]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
            log.close()
    logs = [(tmp_path / f"log{i}.txt").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(text[-4000:] for text in logs)
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in logs[0]
    weights = [np.load(tmp_path / f"weights_{i}.npz") for i in range(2)]
    assert [bool(w["chief"]) for w in weights] == [True, False]
    assert [int(w["replicas"]) for w in weights] == [2, 2]
    assert all(bool(w["same_strategy"]) for w in weights)
    assert [int(w["steps"]) for w in weights] == [4, 4]  # 16 examples, global batch 4
    assert [int(w["global_batch"]) for w in weights] == [4, 4]
    keys = [k for k in weights[0].files if k.startswith("w")]
    assert len(keys) == len(single.weights) > 10
    for key in keys:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    # Both workers started from the single-process run's (seeded) weights ...
    for i, start in enumerate(initial):
        for w in weights:
            np.testing.assert_array_equal(w[f"initial{i}"], start, err_msg=f"initial {i}")
    # ... and training moved every trainable weight but the attention queries' and keys'
    # (at a near-uniform start their gradients are ~1e-6, and the key bias's is zero:
    # softmax ignores a shift shared by all keys). The unused pooler is frozen: unchanged.
    moved = {v.path: float(np.abs(weights[0][f"w{i}"] - initial[i]).max())
             for i, v in enumerate(single.weights)}
    for v in single.weights:
        if not v.trainable:
            assert moved[v.path] == 0.0, (v.path, moved[v.path])
        elif not any(f"/{part}/" in v.path for part in ("query", "key")):
            assert moved[v.path] > 1e-3, (v.path, moved[v.path])
    assert sum(v.trainable for v in single.weights) >= 30
    # The all-reduced mean of 2 replicas' gradients (2 examples each) is one 4-example
    # batch's mean gradient up to float rounding: the workers end where one process ends.
    # Measured: largest difference 6e-7 after 4 SGD steps; allowed 5e-6 (moves above: > 1e-3).
    assert int(single.optimizer.iterations.numpy()) == 4
    for i, end in enumerate(single.get_weights()):
        np.testing.assert_allclose(weights[0][f"w{i}"], end, rtol=0, atol=5e-6,
                                   err_msg=f"{single.weights[i].path}: 2 workers vs one process")

    written = [(tmp_path / f"written_{i}.txt").read_text() for i in range(2)]
    assert written[0] == str(tmp_path / "export" / "1")
    assert not os.path.exists(written[1]), "the worker's scratch export was not removed"
    assert sorted(os.listdir(tmp_path / "export")) == ["1"]
    with contextlib.suppress(ImportError):
        import tensorflow_text  # noqa: F401  registers the tokenizer ops
    loaded = tf.saved_model.load(written[0])
    texts = ["the team win the match", "market shares and profit"]
    outputs = loaded.signatures["serving_default"](tf.constant(texts))
    chief_probs = np.load(tmp_path / "chief_probs.npy")
    np.testing.assert_allclose(outputs["probabilities"].numpy(), chief_probs[[0, 2]],
                               atol=1e-5)
    names = [n.decode() for n in outputs["class_names"].numpy()]
    assert set(names) <= {"sport", "politics", "business", "entertainment"}
