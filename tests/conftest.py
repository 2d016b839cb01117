"""Shared fixtures: real offline assets loaded once per session, tiny models, checks."""

import os
from pathlib import Path

import keras
import numpy as np
import pytest

import tfft  # importing tfft selects the TensorFlow backend

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "the", "a", "of", "to", "and", "in", "is", "on", "for", "with", "news", "sport", "game",
    "team", "win", "match", "election", "vote", "party", "minister", "market", "shares",
    "profit", "bank", "film", "music", "star", "award", "phone", "software", "computer",
    "internet",
]


def _one_intra_op_thread_per_core():
    """With several pytest-xdist workers, TensorFlow's op thread pools share out the cores.

    Each TensorFlow process sizes its intra-op pool to every core, so two workers on
    two cores (`make test`), and the processes their tests start, run twice the threads
    the machine has; their kernels then wait on one another. One intra-op thread per
    worker on 2 cores: 5% less wall time over `tests/freeze tests/feature_cache
    tests/data tests/training` (two A/B pairs, 253 s -> 239 s). Set before any
    TensorFlow op runs (TensorFlow reads it when it makes its thread pools) and
    inherited by the processes tests start; a value the caller set is kept.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))


_one_intra_op_thread_per_core()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real offline pretrained assets (still run in CI)")
    config.addinivalue_line("markers", "xdist_group(name): tests pytest-xdist keeps on one worker")


# `make test` runs pytest-xdist with two workers. Each top folder of tests/ (and
# test_readme.py) is one scheduling unit that runs whole on one worker
# (`pytest_xdist_make_scheduler` below), so the session fixtures a folder shares (the real
# MiniLM job, the LFW image job, SmolLM2, the README runner) are built once, not once per
# worker. Units go out heaviest first (the weights are rough serial seconds on 2 cores;
# `--durations` shows them), so no worker starts a long unit last.
# Not xdist's `--dist loadgroup` with an `xdist_group` mark added here: with pytest 9.2 and
# pytest-xdist 3.8 the worker's `@group` node-id suffix never reaches the scheduler, so every
# folder's tests were spread over both workers (each then built every fixture, and the README
# runner ran every block on both).
_GROUP_WEIGHTS = {
    "test_readme.py": 330, "core": 330, "jobs": 280, "prompting": 230, "packaging": 220,
    "notebooks": 210, "reliability": 170, "evaluation": 160, "backbones": 150,
    "training": 110, "export": 110, "strategy": 100, "selection": 80, "data": 70,
    "feature_cache": 60, "freeze": 60, "causal_lm": 400, "vision_dense": 200,
}


def _test_group(item):
    parts = Path(str(item.path)).relative_to(Path(__file__).parent).parts
    return parts[0]


def pytest_collection_modifyitems(config, items):
    # A stable sort: within a group the collection order stays.
    items.sort(key=lambda item: -_GROUP_WEIGHTS.get(_test_group(item), 0))


def pytest_xdist_make_scheduler(config, log):
    """Schedules whole test folders (`tests/core/...` -> `core`), in collection order."""
    from xdist.scheduler import LoadScopeScheduling

    class FolderScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            parts = nodeid.split("::", 1)[0].split("/")
            return parts[1] if len(parts) > 2 else parts[-1]

    return FolderScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Feature caches go to a per-session folder unless the caller chose one."""
    if "TFFT_CACHE_DIR" not in os.environ:
        # Converted presets (EfficientNet, SmolLM2) stay in the user cache, which
        # is slow to rebuild; only feature caches are isolated.
        os.environ["TFFT_FEATURE_CACHE_DIR"] = str(tmp_path_factory.mktemp("features"))
    yield


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 backbone at a short sequence length."""
    return tfft.load_backbone("minilm", sequence_length=64)


@pytest.fixture(scope="session")
def bbc():
    from tfft.data import load_bbc_news

    return load_bbc_news()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    import keras_hub

    return keras_hub.models.BertTokenizer(vocabulary=VOCAB)


@pytest.fixture(scope="session")
def tiny_text_preprocessor(tiny_tokenizer):
    import keras_hub

    return keras_hub.models.BertTextClassifierPreprocessor(tiny_tokenizer, sequence_length=16)


def make_tiny_bert(num_layers=3, seed=0, max_sequence_length=16, dropout=0.1):
    import keras_hub

    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=num_layers, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=max_sequence_length, dropout=dropout,
    )


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def new_tiny_text_backbone(tiny_text_preprocessor):
    """`new()`: another tiny random BERT wrapped as a tfft Backbone (same seed each time)."""

    def new():
        backbone = tfft.load_backbone(make_tiny_bert())
        backbone.preprocessor = tiny_text_preprocessor
        return backbone

    return new


@pytest.fixture
def tiny_text_backbone(new_tiny_text_backbone):
    """A tiny random BERT wrapped as a tfft Backbone with a real preprocessor."""
    return new_tiny_text_backbone()


def tiny_text_batch(n=16, seed=0, length=16):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, length), dtype="int32")
    for i in range(n):
        mask[i, rng.integers(4, length):] = 0
    return {
        "token_ids": rng.integers(5, len(VOCAB), (n, length)).astype("int32") * mask,
        "segment_ids": np.zeros((n, length), dtype="int32"),
        "padding_mask": mask,
    }


@pytest.fixture
def text_batch():
    return tiny_text_batch()


@pytest.fixture
def tiny_cnn():
    """A small random MobileNetV2 (has BatchNorm), 32x32 inputs."""
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(32, 32, 3), alpha=0.35
    )


@pytest.fixture(scope="session")
def read_weights_file():
    """Reads every array of a Keras `.weights.h5` file, keyed by its path in the file."""
    import h5py

    def read(path):
        found = {}
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, item: found.__setitem__(name, item[()])
                         if isinstance(item, h5py.Dataset) else None)
        return found

    return read


@pytest.fixture(scope="session")
def count_train_step_traces():
    """`count(model)`: a list that grows by one each time `fit` traces `model`'s train step."""

    def count(model):
        traces, step = [], model.train_step

        def counted(data):
            traces.append(1)  # Python runs once per trace
            return step(data)

        model.train_step = counted
        return traces

    return count


@pytest.fixture(scope="session")
def free_ports():
    """`free_ports(n)`: n TCP ports on 127.0.0.1 free at the time of the call."""
    import socket

    def find(n):
        sockets = [socket.socket() for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
        for s in sockets:
            s.close()
        return ports

    return find


@pytest.fixture
def assert_round_trip(tmp_path):
    """Saves a model as .keras, reloads it, and compares outputs."""

    def check(model, x, atol=1e-6):
        path = str(tmp_path / "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
        want = model.predict(x, verbose=0)
        got = reloaded.predict(x, verbose=0)
        np.testing.assert_allclose(got, want, atol=atol)
        return reloaded

    return check


@pytest.fixture
def assert_step_changes_only_trainable():
    """One training step changes every trainable variable and no other."""

    def check(model, x, y):
        before = {id(w): np.array(w.numpy()) for w in model.weights}
        model.train_on_batch(x, y)
        trainable = {id(w) for w in model.trainable_weights}
        changed, unchanged_trainable = [], []
        for w in model.weights:
            moved = not np.array_equal(before[id(w)], w.numpy())
            if id(w) in trainable and not moved:
                unchanged_trainable.append(w.path)
            if id(w) not in trainable and moved:
                changed.append(w.path)
        assert not changed, f"frozen variables changed: {changed[:5]}"
        assert not unchanged_trainable, (
            f"trainable variables did not move: {unchanged_trainable[:5]}"
        )

    return check


@pytest.fixture(scope="session")
def finetune_run(tmp_path_factory):
    """The real main job at reduced size, run once per session.

    300 BBC News articles, sequence length 64, one fine-tuning epoch.
    """
    root = tmp_path_factory.mktemp("finetune")
    report = tfft.run_job(
        max_examples=300, sequence_length=64, batch_size=16, head_epochs=15, epochs=1,
        run_dir=str(root / "run"), export_dir=str(root / "saved_models" / "bbc_small"),
        verbose=0,
    )
    return report


_RELOAD_SCRIPT = r"""
import json, sys
import numpy as np
import keras
import tfft

args = sys.argv[1:]
for path, inputs_path, out_path in zip(args[0::3], args[1::3], args[2::3], strict=True):
    task = keras.saving.load_model(path, safe_mode=True)
    inputs = np.load(inputs_path, allow_pickle=False)
    x = {k: inputs[k] for k in inputs.files} if "__dict__" in inputs.files else inputs["x"]
    if isinstance(x, dict):
        x.pop("__dict__")
    if not isinstance(x, dict) and x.dtype.kind == "U":
        x = x.tolist()
    np.save(out_path + ".npy", task.predict(x, verbose=0))
    lora = [np.asarray(layer.lora_kernel_b).tolist()
            for layer in tfft.adapt.lora_layers(task.backbone)] if hasattr(task, "backbone") else []
    policy = getattr(task, "freeze_policy", None)
    info = getattr(task, "backbone_info", None)
    with open(out_path + ".json", "w") as f:
        json.dump({
            "type": type(task).__name__,
            "trainable": sorted(w.path for w in task.trainable_weights),
            "freeze_policy": None if policy is None else policy.to_dict(),
            "class_names": getattr(task, "class_names", None),
            "backbone_info": None if info is None else info.to_dict(),
            "preprocessor": type(getattr(task, "preprocessor", None)).__name__,
            "lora_b": lora,
        }, f)
"""


def _fresh_process_reloader(folder):
    """`reload(model, x)` and `reload.many([(model, x), ...])`, saving into `folder`."""
    import json
    import subprocess
    import sys

    def many(pairs):
        args, outs = [], []
        for index, (model, x) in enumerate(pairs):
            path = str(folder / f"task{index}.keras")
            model.save(path)
            inputs = folder / f"inputs{index}.npz"
            if isinstance(x, dict):
                np.savez(inputs, __dict__=np.zeros(1), **x)
            else:
                np.savez(inputs, x=np.asarray(x))
            out = str(folder / f"reloaded{index}")
            args += [path, str(inputs), out]
            outs.append(out)
        proc = subprocess.run(
            [sys.executable, "-c", _RELOAD_SCRIPT, *args],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = []
        for out in outs:
            with open(out + ".json") as f:
                results.append((np.load(out + ".npy"), json.load(f)))
        return results

    def reload(model, x):
        [result] = many([(model, x)])
        return result

    reload.many = many
    return reload


@pytest.fixture
def reload_in_fresh_process(tmp_path):
    """Saves a model as .keras and reloads it in a new Python process (safe mode on).

    `reload(model, x)` returns the reloaded model's predictions on `x` and a dict
    describing it: type, trainable weight paths, freeze policy, class names,
    backbone info, preprocessor class and LoRA B matrices. `reload.many([(model, x),
    ...])` reloads several models, one after another, in one new process (one
    TensorFlow start) and returns a list of those pairs.
    """
    return _fresh_process_reloader(tmp_path)


@pytest.fixture(scope="module")
def module_reload_in_fresh_process(tmp_path_factory):
    """`reload_in_fresh_process` for module-scoped fixtures."""
    return _fresh_process_reloader(tmp_path_factory.mktemp("reload"))


LFW_JOB_PER_CLASS = 60


@pytest.fixture(scope="session")
def lfw_png_job(tmp_path_factory):
    """`tfft finetune` on LFW faces vs not, written as PNG class folders, run once per session.

    The first 60 images of each class (plus one broken file, skipped) train an
    EfficientNet-Lite0 at reduced size (10 head epochs, one epoch with the top block
    unfrozen); the rest of LFW is never seen by the job. Returns `{"report": the job's
    report.json, "data": the LFW subset, "per_class": 60, "spec": the backbone spec}`.
    Used by tests/jobs/test_own_data_real.py (the job itself) and
    tests/evaluation/test_evaluate_data.py (`tfft evaluate` on the job's export).
    """
    import json

    import tensorflow as tf

    from tfft.cli.main import main
    from tfft.data import load_lfw_subset

    tmp = tmp_path_factory.mktemp("lfw_job")
    lfw = load_lfw_subset()
    root = tmp / "lfw"
    for label, name in enumerate(lfw.class_names):
        os.makedirs(root / name)
        for i in np.flatnonzero(lfw.y == label)[:LFW_JOB_PER_CLASS]:
            tf.io.write_file(str(root / name / f"{i:03d}.png"),
                             tf.io.encode_png(lfw.x[i][..., np.newaxis]))
    (root / "face" / "unreadable.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    spec = "offline:efficientnet_lite0"
    (tmp / "split.json").write_text(json.dumps({"test_fraction": 0.3}))
    run_dir, export_dir = tmp / "run", tmp / "export"
    code = main(["finetune", "--data", str(root), "--backbone", spec, "--on-error", "skip",
                 "--config", str(tmp / "split.json"), "--head-epochs", "10", "--epochs", "1",
                 "--unfreeze-top", "1", "--batch-size", "16",
                 "--run-dir", str(run_dir), "--export-dir", str(export_dir)])
    assert code == 0
    with open(run_dir / "report.json") as f:
        report = json.load(f)
    return {"report": report, "data": lfw, "per_class": LFW_JOB_PER_CLASS, "spec": spec}
