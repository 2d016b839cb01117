"""Cache entries on disk: clear_cache spares the user's files, broken entries are rebuilt.

A cache root may be a folder the user also keeps files in (`TFFT_FEATURE_CACHE_DIR=.`,
`directory=os.path.expanduser("~")`); only what tfft wrote there may go. An entry
broken by a crash, a full disk or a stray edit must cost one recomputation, not
every later call.
"""

import json
import logging
import os
import shutil
import tempfile
import threading

import numpy as np
import pytest

from tfft.training import feature_cache

TEXTS = np.array([
    "the team win the match", "shares and profit at the bank", "film star award",
    "the minister and the election vote", "phone software on the internet",
    "music star in a film",
])


def through_cache(model, x, root):
    return feature_cache.cached_features(model, x, model.make_dataset, directory=root,
                                         verbose=0)


@pytest.fixture(scope="module")
def sound_entry(make_model, tmp_path_factory):
    """A model, its features on TEXTS and a folder holding their sound cache entry."""
    root = str(tmp_path_factory.mktemp("sound"))
    model = make_model(seed=0)
    features, _ = through_cache(model, TEXTS, root)
    return model, np.array(features), root


def copy_entries(sound_root, root):
    """Copies the sound entry (a real one, written by cached_features) into `root`."""
    for name in os.listdir(sound_root):
        shutil.copytree(os.path.join(sound_root, name), os.path.join(root, name))


def plant_user_files(root):
    """Things a user keeps in a folder that is also the cache root; returns path -> bytes."""
    files = {
        "notes.txt": b"my notes",
        "photos/cat.jpg": b"\xff\xd8 a cat",
        # Named like a cache key, but not an entry: user files inside.
        "0123456789abcdef0123456789abcdef/thesis.tex": b"\\section{One}",
        "fedcba9876543210fedcba9876543210/key.json": b"{}",
        "fedcba9876543210fedcba9876543210/draft.txt": b"mine",
        # Named like tfft's temporary folders, but holding user files.
        ".tmp-0123456789abcdef0123456789abcdef-abcd1234/diary.txt": b"dear diary",
        ".old-abcd1234/v/letter.txt": b"dear tfft",
        ".tmp-mine/keep.txt": b"keep",
        "features.npy": b"not tfft's",
    }
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    # A link named like a key, pointing at a user folder.
    os.symlink(os.path.join(root, "photos"), os.path.join(root, "a" * 32))
    return files


def assert_user_files_intact(root, files):
    for name, data in files.items():
        with open(os.path.join(root, name), "rb") as f:
            assert f.read() == data, name
    assert os.path.islink(os.path.join(root, "a" * 32))


def plant_tfft_leftovers(root, key):
    """What a killed tfft process leaves: staging folders (as `staged_directory` names
    them, files directly inside or in a folder named after the key), a half-written
    temporary key file, and a replaced entry moved aside."""
    flat = tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-")
    np.save(os.path.join(flat, "features.npy"), np.zeros((2, 8), "float32"))
    nested = tempfile.mkdtemp(dir=root, prefix=f".tmp-{key}-")
    os.makedirs(os.path.join(nested, key))
    np.save(os.path.join(nested, key, "features.npy"), np.zeros((2, 8), "float32"))
    with open(os.path.join(nested, key, ".tmp-key.json-0a1b2c3d4e5f"), "w") as f:
        f.write('{"ke')
    old = tempfile.mkdtemp(dir=root, prefix=".old-")
    os.makedirs(os.path.join(old, "v"))
    for name in ("features.npy", "key.json"):
        with open(os.path.join(old, "v", name), "wb") as f:
            f.write(b"x")
    return [flat, nested, old]


def test_clear_cache_removes_only_what_tfft_wrote(sound_entry, tmp_path):
    model, _, sound_root = sound_entry
    root = str(tmp_path)
    files = plant_user_files(root)
    copy_entries(sound_root, root)
    through_cache(model, TEXTS[:3], root)
    keys = [e["key"] for e in feature_cache.list_cached(root)]
    assert len(keys) == 2
    leftovers = plant_tfft_leftovers(root, keys[0])

    with pytest.raises(ValueError, match="32 lowercase hex"):
        feature_cache.clear_cache(root, key="photos")
    with pytest.raises(ValueError, match="32 lowercase hex"):
        feature_cache.clear_cache(root, key="../" + keys[0])
    assert feature_cache.clear_cache(root, key="0123456789abcdef0123456789abcdef") == 0
    assert feature_cache.clear_cache(root, key="a" * 32) == 0  # a link, not an entry
    assert_user_files_intact(root, files)

    assert feature_cache.clear_cache(root) == 2
    assert_user_files_intact(root, files)
    assert feature_cache.list_cached(root) == []
    for path in [*(os.path.join(root, k) for k in keys), *leftovers]:
        assert not os.path.exists(path), path


def test_clear_cache_with_the_working_directory_as_root(sound_entry, tmp_path, monkeypatch):
    model, _, sound_root = sound_entry
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFFT_FEATURE_CACHE_DIR", ".")
    files = plant_user_files(".")
    copy_entries(sound_root, ".")
    assert len(feature_cache.list_cached()) == 1
    assert feature_cache.clear_cache() == 1
    assert_user_files_intact(".", files)
    assert feature_cache.list_cached() == []
    assert not feature_cache.is_cached(model, TEXTS)  # "." was the cache root


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 16)


def _empty(path):
    open(path, "wb").close()


def _garbage_json(path):
    with open(path, "w") as f:
        f.write('{"key": "0123')


def _other_key(path):
    with open(path) as f:
        meta = json.load(f)
    with open(path, "w") as f:
        json.dump({**meta, "key": "0" * 32}, f)


def _fewer_rows(path):
    np.save(path, np.load(path)[:2])


CORRUPTIONS = {
    "truncated features": ("features.npy", _truncate),
    "empty features": ("features.npy", _empty),
    "missing features": ("features.npy", os.remove),
    "features of another size": ("features.npy", _fewer_rows),
    "missing key file": ("key.json", os.remove),
    "unparsable key file": ("key.json", _garbage_json),
    "key file of another entry": ("key.json", _other_key),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_broken_entry_is_a_miss_rebuilt_once_with_one_warning(sound_entry, tmp_path, caplog,
                                                                corruption):
    model, want, sound_root = sound_entry
    root = str(tmp_path)
    copy_entries(sound_root, root)
    [entry] = feature_cache.list_cached(root)
    name, corrupt = CORRUPTIONS[corruption]
    corrupt(os.path.join(root, entry["key"], name))

    with caplog.at_level(logging.WARNING, logger="tfft.training.feature_cache"):
        got, hit = through_cache(model, TEXTS, root)
        again, hit_again = through_cache(model, TEXTS, root)
    assert (hit, hit_again) == (False, True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(again), got)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "tfft.training.feature_cache" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "broken" in warnings[0] and entry["key"] in warnings[0]
    [rebuilt] = feature_cache.list_cached(root)
    assert rebuilt["key"] == entry["key"] and "broken" not in rebuilt
    assert sorted(os.listdir(root)) == [entry["key"]]  # nothing left beside it
    assert feature_cache.is_cached(model, TEXTS, directory=root)


def test_a_broken_entry_is_listed_as_broken_and_cleared(sound_entry, tmp_path):
    root = str(tmp_path)
    copy_entries(sound_entry[2], root)
    [entry] = feature_cache.list_cached(root)
    _truncate(os.path.join(root, entry["key"], "features.npy"))
    [listed] = feature_cache.list_cached(root)
    assert "mmap length" in listed["broken"] or "features.npy" in listed["broken"]
    assert feature_cache.clear_cache(root) == 1
    assert os.listdir(root) == []


def test_a_call_that_loses_the_race_keeps_its_features_and_the_winners_entry(make_model,
                                                                             tmp_path):
    """Two calls compute one entry at once; the second to finish must not fail."""
    root = str(tmp_path)
    model = make_model(seed=0)
    winner = {}

    def make_dataset_while_another_call_finishes(x):
        # The other call computes and stores the same entry while this one computes.
        winner["features"], winner["hit"] = through_cache(model, x, root)
        [winner["entry"]] = feature_cache.list_cached(root)
        return model.make_dataset(x)

    features, hit = feature_cache.cached_features(
        model, TEXTS, make_dataset_while_another_call_finishes, directory=root, verbose=0)
    assert not hit and not winner["hit"]
    np.testing.assert_allclose(features, winner["features"], atol=1e-6)
    [entry] = feature_cache.list_cached(root)
    assert entry["created"] == winner["entry"]["created"]  # the winner's copy stayed
    assert sorted(os.listdir(root)) == [entry["key"]]


def test_concurrent_writers_never_fail_nor_leave_a_half_written_entry(tmp_path):
    """Threads store one entry at once while readers read it; then race to replace it broken."""
    root = str(tmp_path)
    key = "c" * 32
    entry = os.path.join(root, key)
    features = np.arange(64 * 8, dtype="float32").reshape(64, 8)
    errors, seen = [], []
    stop = threading.Event()
    barrier = threading.Barrier(4)

    def write(rounds):
        try:
            for _ in range(rounds):
                barrier.wait()  # all writers store at the same moment
                feature_cache._store_entry(entry, key, features, {"test": True})
        except Exception as error:  # the property under test: no writer fails
            errors.append(error)

    def read():
        while not stop.is_set():
            got, problem = feature_cache._read_entry(entry, key, len(features))
            seen.append((None if got is None else np.array_equal(np.asarray(got), features),
                         problem))

    def race(rounds, readers=()):
        threads = [threading.Thread(target=write, args=(rounds,)) for _ in range(4)]
        for t in [*readers, *threads]:
            t.start()
        for t in threads:
            t.join()

    # Phase 1: an empty cache, four writers at once, two readers. A read finds the
    # whole entry or none (a writer may move a copy aside for a moment: a miss), never
    # a half-written one (truncated features, a partial or foreign key file).
    readers = [threading.Thread(target=read) for _ in range(2)]
    race(10, readers)
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert any(whole for whole, _ in seen)
    assert all(whole is not False for whole, _ in seen)
    half_written = [p for _, p in seen if p and not p.endswith("is missing")]
    assert half_written == []
    # Phase 2: the entry is broken; four writers see it broken and replace it at once.
    for _ in range(8):
        with open(os.path.join(entry, "features.npy"), "r+b") as f:
            f.truncate(100)
        race(1)
        assert errors == []
        got, problem = feature_cache._read_entry(entry, key, len(features))
        assert problem is None
        np.testing.assert_array_equal(np.asarray(got), features)
    assert sorted(os.listdir(root)) == [key]  # no staging folder left behind
