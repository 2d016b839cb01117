"""Exports under concurrency, file modes and a hostile working directory (issue 17, items 6, 7, 9).

- Two exports that pick the same version both survive (the later one takes the
  next free version); an explicitly named version that appears meanwhile
  raises and leaves the other export intact.
- Finished artefacts follow the umask (0755 folders / 0644 files under 022),
  so a server running as another user can read them; under 077 they stay
  private.
- The fresh-process verification never imports modules from the caller's
  working directory.
"""

import json
import os
import stat
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfft.evaluation.metrics import EvaluationReport
from tfft.export import export_saved_model, saved_model, to_tflite
from tfft.utils.files import staged_directory, write_bytes_atomic, write_json_atomic

CLASSES = ["a", "b", "c"]
SIZE = (8, 8)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_image_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def export(model, directory, **kwargs):
    kwargs.setdefault("verify", False)
    return export_saved_model(model, directory, class_names=CLASSES, modality="image",
                              image_size=SIZE, **kwargs)


@pytest.fixture(scope="module")
def model():
    return tiny_image_model()


PIXELS = np.random.default_rng(3).integers(0, 256, (2, *SIZE, 3)).astype("uint8")


def served(path):
    """The probabilities of a version reloaded from disk (it must load and run)."""
    serve = tf.saved_model.load(path).signatures[saved_model.ARRAY_SIGNATURE]
    return serve(tf.constant(PIXELS))["probabilities"].numpy()


def in_memory(model):
    return model.predict(PIXELS.astype("float32"), verbose=0)


def snapshot(directory):
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


@pytest.fixture
def competing_export(monkeypatch):
    """Runs a whole second export right after the first one wrote its staging folder.

    The interleaving two processes produce when both pick the same version: the
    second finishes and moves into place while the first is still verifying.
    """
    archive_class = type(keras.export.ExportArchive())
    original = archive_class.write_out
    done = {}

    def install(other_model, directory, **kwargs):
        def write_out(self, filepath, **write_kwargs):
            original(self, filepath, **write_kwargs)
            if not done:
                done["path"] = "pending"
                monkeypatch.setattr(archive_class, "write_out", original)
                done["path"] = export(other_model, directory, **kwargs)

        monkeypatch.setattr(archive_class, "write_out", write_out)
        return done

    return install


def test_automatic_version_taken_meanwhile_moves_to_the_next(model, tmp_path,
                                                             competing_export):
    directory = str(tmp_path / "m")
    other = tiny_image_model(seed=1)
    done = competing_export(other, directory)
    path = export(model, directory)
    assert done["path"] == os.path.join(directory, "1")
    assert path == os.path.join(directory, "2")
    assert sorted(os.listdir(directory)) == ["1", "2"]
    # Each version is the export that claimed it, complete: nothing was overwritten.
    np.testing.assert_allclose(served(done["path"]), in_memory(other), atol=1e-5)
    np.testing.assert_allclose(served(path), in_memory(model), atol=1e-5)
    assert saved_model.read_metadata(path)["version"] == 2
    assert saved_model.read_metadata(done["path"])["version"] == 1


def test_explicit_version_taken_meanwhile_raises_and_keeps_the_other(model, tmp_path,
                                                                     competing_export):
    directory = str(tmp_path / "m")
    other = tiny_image_model(seed=1)
    done = competing_export(other, directory, version=4)
    with pytest.raises(FileExistsError, match=r"version .*4.* was written by another"):
        export(model, directory, version=4)
    assert sorted(os.listdir(directory)) == ["4"]  # no staging debris either
    np.testing.assert_allclose(served(done["path"]), in_memory(other), atol=1e-5)


def test_staged_directory_never_replaces_a_folder_that_appeared(tmp_path):
    target = tmp_path / "entry"
    with pytest.raises(FileExistsError, match="already exists"), \
            staged_directory(target) as staging:
        (tmp_path / "entry").mkdir()
        (tmp_path / "entry" / "theirs").write_text("kept")
        with open(os.path.join(staging, "mine"), "w") as f:
            f.write("lost")
    assert os.listdir(target) == ["theirs"]
    assert (target / "theirs").read_text() == "kept"
    assert os.listdir(tmp_path) == ["entry"]


_RACE_SCRIPT = r"""
import json, os, sys, time

import keras
import numpy as np

from tfft.export import saved_model
from tfft.utils import files

name, directory, work = sys.argv[1:4]
original = files.rename_directory_exclusive
barrier = None


def wait_for_both_then_move(source, target):
    # Both processes have chosen their version and hold a complete staging folder.
    open(os.path.join(barrier, name), "w").close()
    deadline = time.time() + 120
    while len(os.listdir(barrier)) < 2 and time.time() < deadline:
        time.sleep(0.01)
    return original(source, target)


saved_model.rename_directory_exclusive = wait_for_both_then_move
keras.utils.set_random_seed(int(name))
inputs = keras.Input((8, 8, 3))
outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
model = keras.Model(inputs, outputs)
pixels = np.load(os.path.join(work, "pixels.npy"))
np.save(os.path.join(work, f"expected-{name}.npy"), model.predict(pixels.astype("float32")))
result = {}
for phase, version in (("automatic", None), ("explicit", 7)):
    barrier = os.path.join(work, f"barrier-{phase}")
    try:
        result[phase] = saved_model.export_saved_model(
            model, directory, class_names=["a", "b", "c"], modality="image",
            image_size=(8, 8), version=version, verify=False)
    except FileExistsError as error:
        result[phase] = f"REFUSED {error}"
with open(os.path.join(work, f"result-{name}.json"), "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow  # two fresh TensorFlow processes: ~12 s of CPU, ~20 s on 2 busy cores
def test_two_processes_exporting_at_once_lose_nothing(tmp_path):
    work = tmp_path / "work"
    for phase in ("automatic", "explicit"):
        (work / f"barrier-{phase}").mkdir(parents=True)
    np.save(work / "pixels.npy", PIXELS)
    script = tmp_path / "race.py"
    script.write_text(_RACE_SCRIPT)
    directory = str(tmp_path / "m")
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = {
        name: subprocess.Popen([sys.executable, str(script), name, directory, str(work)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=str(tmp_path))
        for name in ("1", "2")
    }
    for proc in procs.values():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
    results = {name: json.loads((work / f"result-{name}.json").read_text()) for name in procs}
    expected = {name: np.load(work / f"expected-{name}.npy") for name in procs}
    assert not np.allclose(expected["1"], expected["2"], atol=1e-3)  # tells the exports apart

    # Both chose version 1 automatically: one got 1, the other moved on to 2.
    paths = {name: result["automatic"] for name, result in results.items()}
    assert sorted(paths.values()) == [os.path.join(directory, "1"),
                                      os.path.join(directory, "2")]
    for name, path in paths.items():
        np.testing.assert_allclose(served(path), expected[name], atol=1e-5)
        assert saved_model.read_metadata(path)["version"] == int(os.path.basename(path))

    # Both named version 7: one wrote it, the other refused, and the written one is whole.
    outcomes = {name: result["explicit"] for name, result in results.items()}
    winners = [name for name, out in outcomes.items() if not out.startswith("REFUSED")]
    assert len(winners) == 1, outcomes
    loser = "2" if winners == ["1"] else "1"
    assert "was written by another export" in outcomes[loser]
    assert outcomes[winners[0]] == os.path.join(directory, "7")
    np.testing.assert_allclose(served(outcomes[winners[0]]), expected[winners[0]], atol=1e-5)
    assert sorted(os.listdir(directory)) == ["1", "2", "7"]  # no staging debris


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(directory):
    """`{relative path: permission bits}` of `directory` and everything below it."""
    found = {".": stat.S_IMODE(os.stat(directory).st_mode)}
    for root, dirs, names in os.walk(directory):
        for name in dirs + names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = stat.S_IMODE(os.stat(path).st_mode)
    return found


def test_export_follows_the_umask(model, tmp_path, umask):
    path = export(model, str(tmp_path / "m"))
    found = modes(path)
    want_dir, want_file = 0o777 & ~umask, 0o666 & ~umask
    assert found["."] == want_dir
    assert "saved_model.pb" in found and saved_model.METADATA_FILE in found
    for rel, mode in found.items():
        want = want_dir if os.path.isdir(os.path.join(path, rel)) else want_file
        assert mode == want, f"{rel}: {oct(mode)} != {oct(want)} under umask {oct(umask)}"


def test_reports_and_tflite_follow_the_umask(model, tmp_path, umask):
    want = 0o666 & ~umask
    report = EvaluationReport(metrics={"accuracy": 0.5}, task="multiclass",
                              class_names=CLASSES)
    written = [
        report.save_json(str(tmp_path / "report.json")),
        write_json_atomic(tmp_path / "runs" / "config.json", {"epochs": 1}),
        write_bytes_atomic(tmp_path / "blob.bin", b"\0\1"),
        to_tflite(model, str(tmp_path / "model.tflite"))["path"],
    ]
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == want, path
    # Replacing a file keeps following the umask, and leaves no temporary sibling.
    write_json_atomic(tmp_path / "report.json", {"again": True})
    assert stat.S_IMODE(os.stat(tmp_path / "report.json").st_mode) == want
    assert json.loads((tmp_path / "report.json").read_text()) == {"again": True}
    assert sorted(os.listdir(tmp_path)) == ["blob.bin", "model.tflite", "report.json", "runs"]


def test_staged_directory_follows_the_umask(tmp_path, umask):
    with staged_directory(tmp_path / "cache" / "entry") as staging:
        os.mkdir(os.path.join(staging, "sub"))
        with open(os.path.join(staging, "sub", "f"), "w") as f:
            f.write("x")
    found = modes(tmp_path / "cache" / "entry")
    assert found == {".": 0o777 & ~umask, "sub": 0o777 & ~umask, "sub/f": 0o666 & ~umask}


STRAY_MODULES = ("keras", "tensorflow_text", "numpy", "tensorflow")


def test_verification_ignores_modules_in_the_working_directory(model, tmp_path, monkeypatch):
    cwd = tmp_path / "project"
    cwd.mkdir()
    marker = tmp_path / "imported"
    for name in STRAY_MODULES:
        (cwd / f"{name}.py").write_text(textwrap.dedent(f"""
            with open({str(marker)!r}, "a") as f:
                f.write({name!r} + "\\n")
            raise ImportError("the stray {name}.py in the working directory was imported")
        """))
    monkeypatch.chdir(cwd)
    path = export(model, "m", verify=True)  # a relative directory resolves against cwd
    assert not marker.exists(), marker.read_text()
    assert path == os.path.join(str(cwd), "m", "1")
    np.testing.assert_allclose(served(path), in_memory(model), atol=1e-5)
