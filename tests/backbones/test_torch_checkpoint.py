"""The torch-free PyTorch checkpoint reader refuses hostile files (issue 17, items 1 and 2).

Checkpoints are crafted byte by byte (torch is not installed): a small pickle
writer below emits the opcodes `torch.save` emits, so a test can put a code
payload, an out-of-bounds view or a broken layout exactly where it wants.
Payloads write a marker file; every test that sends one asserts the marker
was never written. The cases that used to kill the interpreter (a huge
stride, a memo index that asks for tens of GB) run in a child process with
a memory limit, so a regression fails the test instead of the test run.
"""

import copyreg
import hashlib
import io
import os
import pickle
import pickletools
import subprocess
import sys
import textwrap
import traceback
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tfft import assets
from tfft.backbones import torch_checkpoint
from tfft.backbones.torch_checkpoint import load_state_dict

FUZZ = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
READER_FILE = torch_checkpoint.__file__
# sha256 over (key, dtype, shape, bytes) of every tensor, computed with the reader
# as it was before issue 17: the hardened reader must return the same weights.
REAL_CHECKPOINT_SHA256 = "623410201e6869bde89bd8a151dc60434dfeb598965ff44f3c6ebe720b56804e"

# --- a minimal pickle writer: the opcodes torch.save emits -----------------------


class Global:
    """A reference to `module.name` (the GLOBAL opcode)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class Call:
    """`function(*args)` at load time (the REDUCE opcode)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args


class PersistentId:
    """A persistent id, as torch.save writes for each storage (BINPERSID)."""

    def __init__(self, pid):
        self.pid = pid


class Raw:
    """Opcodes inserted verbatim."""

    def __init__(self, data):
        self.data = data


def _emit(obj):
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, Global):
        return pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode()
    if isinstance(obj, Call):
        return _emit(obj.function) + _emit(tuple(obj.args)) + pickle.REDUCE
    if isinstance(obj, PersistentId):
        return _emit(obj.pid) + pickle.BINPERSID
    if isinstance(obj, OrderedDict):
        return _emit(Call(Global("collections", "OrderedDict"))) + _emit_items(obj)
    if isinstance(obj, dict):
        return pickle.EMPTY_DICT + _emit_items(obj)
    if isinstance(obj, tuple):
        return pickle.MARK + b"".join(_emit(item) for item in obj) + pickle.TUPLE
    if isinstance(obj, list):
        items = b"".join(_emit(item) for item in obj)
        return pickle.EMPTY_LIST + (pickle.MARK + items + pickle.APPENDS if obj else b"")
    # A plain value: its opcodes without header, STOP or memo writes (so a test's
    # own BINPUT/BINGET indices are never overwritten).
    return pickletools.optimize(pickle.dumps(obj, protocol=3))[2:-1]


def _emit_items(mapping):
    if not mapping:
        return b""
    items = b"".join(_emit(key) + _emit(value) for key, value in mapping.items())
    return pickle.MARK + items + pickle.SETITEMS


def dump(obj):
    return pickle.PROTO + b"\x02" + _emit(obj) + pickle.STOP


def storage(key, numel, kind="FloatStorage", *, legacy_view=False):
    pid = ("storage", Global("torch", kind), key, "cpu", numel)
    return PersistentId((*pid, None) if legacy_view else pid)


def tensor(storage_pid, offset, size, stride):
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    return Call(rebuild, storage_pid, offset, tuple(size), tuple(stride), False, OrderedDict())


def write_zip(path, object_pickle, storages, root="archive"):
    """The zip layout: `<root>/data.pkl` and `<root>/data/<key>`."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", object_pickle)
        for key, raw in storages.items():
            archive.writestr(f"{root}/data/{key}", raw)
    return str(path)


def legacy_bytes(object_pickle, storages, headers=None, keys=None):
    """The legacy layout: magic, protocol, sys-info, object, keys, then the storages."""
    if headers is None:
        headers = [dump(LEGACY_MAGIC), dump(1001), dump({"little_endian": True})]
    out = b"".join(headers) + object_pickle
    out += keys if keys is not None else dump(list(storages))
    for numel, raw in storages.values():
        out += np.array([numel], "<i8").tobytes() + raw
    return out


def write_legacy(path, object_pickle, storages, **kwargs):
    path.write_bytes(legacy_bytes(object_pickle, storages, **kwargs))
    return str(path)


def payload(marker):
    """Code that writes `marker` if anything ever runs it."""
    return Call(Global("builtins", "exec"), f"open({str(marker)!r}, 'w').close()")


def small_state():
    """Two tensors on two float storages, one a transposed view."""
    first = storage("0", 6)
    state = OrderedDict()
    state["conv.weight"] = tensor(first, 0, (2, 3), (3, 1))
    state["conv.weight_t"] = tensor(first, 0, (3, 2), (1, 3))
    state["bias"] = tensor(storage("1", 3), 1, (2,), (1,))
    raw = {"0": np.arange(6, dtype="<f4").tobytes(), "1": np.array([5, 6, 7], "<f4").tobytes()}
    return dump(state), raw


def check_small_state(state):
    flat = np.arange(6, dtype="float32")
    assert list(state) == ["conv.weight", "conv.weight_t", "bias"]
    np.testing.assert_array_equal(state["conv.weight"], flat.reshape(2, 3))
    np.testing.assert_array_equal(state["conv.weight_t"], flat.reshape(2, 3).T)
    np.testing.assert_array_equal(state["bias"], [6.0, 7.0])


def assert_refused(call, *args, match=None):
    """The reader refuses with its own ValueError/UnpicklingError, carrying a message."""
    try:
        result = call(*args)
    except (ValueError, pickle.UnpicklingError) as error:
        frames = traceback.extract_tb(error.__traceback__)
        assert frames[-1].filename == READER_FILE, (
            f"raised outside the reader: {frames[-1].filename}:{frames[-1].lineno}: {error!r}"
        )
        assert str(error).strip()
        if match is not None:
            assert match in str(error), str(error)
        return error
    raise AssertionError(f"loaded instead of refusing: {result!r:.200}")


def run_isolated(path, memory_gb=4):
    """Loads `path` in a child process under a memory limit; returns (exit code, output)."""
    code = textwrap.dedent(f"""
        import importlib.util, pickle, resource, sys
        limit = {memory_gb} << 30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        spec = importlib.util.spec_from_file_location("reader", {READER_FILE!r})
        reader = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(reader)
        try:
            reader.load_state_dict({str(path)!r})
        except (ValueError, pickle.UnpicklingError) as error:
            print("refused:", error)
            sys.exit(0)
        print("loaded")
        sys.exit(3)
    """)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    return done.returncode, done.stdout + done.stderr


# --- the layouts still read --------------------------------------------------------


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_crafted_checkpoints_read_in_both_layouts(tmp_path, layout):
    object_pickle, raw = small_state()
    if layout == "zip":
        path = write_zip(tmp_path / "m.pth", object_pickle, raw)
    else:
        storages = {key: (len(data) // 4, data) for key, data in raw.items()}
        path = write_legacy(tmp_path / "m.pth", object_pickle, storages)
    state = load_state_dict(path)
    check_small_state(state)
    assert all(array.flags.writeable and array.flags.c_contiguous for array in state.values())


@pytest.fixture(scope="module")
def real_checkpoint():
    path = assets.asset_path("efficientnet_lite0")
    with open(path, "rb") as f:
        return path, f.read()


def test_real_checkpoint_reads_the_same_weights(real_checkpoint):
    state = load_state_dict(real_checkpoint[0])
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(repr(value.shape).encode())
        digest.update(value.tobytes())
    assert len(state) == 296
    assert digest.hexdigest() == REAL_CHECKPOINT_SHA256


# --- item 1: no pickle in either layout runs code ----------------------------------


def _legacy_with_payload_in(slot, marker):
    object_pickle, raw = small_state()
    storages = {key: (len(data) // 4, data) for key, data in raw.items()}
    headers = [dump(LEGACY_MAGIC), dump(1001), dump({"little_endian": True})]
    keys = None
    evil = dump(payload(marker))
    if slot == "keys":
        keys = evil
    elif slot == "object":
        object_pickle = evil
    else:
        headers[["magic", "protocol", "sys_info"].index(slot)] = evil
    return legacy_bytes(object_pickle, storages, headers=headers, keys=keys)


@pytest.mark.parametrize("slot", ["magic", "protocol", "sys_info", "object", "keys"])
def test_legacy_pickles_run_no_code(tmp_path, slot):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_with_payload_in(slot, marker))
    assert_refused(load_state_dict, str(path), match="Refusing to load builtins.exec")
    assert not marker.exists()


def _payload_opcodes(marker):
    """The same payload spelt with each opcode that resolves a global."""
    source = f"open({str(marker)!r}, 'w').close()"
    argument = _emit(source)
    return {
        "GLOBAL": dump(payload(marker)),
        "STACK_GLOBAL": pickle.PROTO + b"\x04" + _emit("builtins") + _emit("exec")
        + pickle.STACK_GLOBAL + pickle.MARK + argument + pickle.TUPLE + pickle.REDUCE
        + pickle.STOP,
        "INST": b"(" + pickle.UNICODE + source.encode("raw_unicode_escape") + b"\n"
        + pickle.INST + b"builtins\nexec\n.",
        "OBJ": pickle.PROTO + b"\x02" + pickle.MARK + _emit(Global("builtins", "exec"))
        + argument + pickle.OBJ + pickle.STOP,
        "allowed-looking name": dump(Call(Global("torch._utils", "exec"), source)),
        "storage-looking name": dump(Call(Global("os", "systemStorage"), source)),
        "tensor hiding a payload": dump(
            {"w": tensor(storage("0", 1), payload(marker), (1,), (1,))}
        ),
    }


@pytest.mark.parametrize(
    "spelling",
    ["GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "allowed-looking name",
     "storage-looking name", "tensor hiding a payload"],
)
def test_zip_pickle_runs_no_code(tmp_path, spelling):
    marker = tmp_path / "ran"
    object_pickle = _payload_opcodes(marker)[spelling]
    path = write_zip(tmp_path / "evil.pth", object_pickle, {"0": b"\0" * 4})
    assert_refused(load_state_dict, path, match="Refusing to load")
    assert not marker.exists()


def test_extension_codes_cannot_bypass_the_allow_list(tmp_path):
    # copyreg caches what an EXT code resolved to, process-wide; an unpickler
    # gets the cached object without asking find_class, so EXT is refused.
    marker = tmp_path / "ran"
    code = 0x7A17
    copyreg.add_extension("builtins", "exec", code)
    try:
        pickle.loads(pickle.PROTO + b"\x02" + pickle.EXT2 + code.to_bytes(2, "little") + b".")
        evil = (pickle.PROTO + b"\x02" + pickle.EXT2 + code.to_bytes(2, "little")
                + _emit((f"open({str(marker)!r}, 'w').close()",)) + pickle.REDUCE + pickle.STOP)
        path = write_zip(tmp_path / "evil.pth", evil, {})
        assert_refused(load_state_dict, path, match="extension")
    finally:
        copyreg.remove_extension("builtins", "exec", code)
    assert not marker.exists()


def test_internal_objects_cannot_be_rewritten_by_build(tmp_path):
    # BUILD on an allowed callable or a storage would set its attributes
    # (e.g. a function's __defaults__), changing the reader for later files.
    defaults = torch_checkpoint._rebuild_parameter.__defaults__
    rebuild = Global("torch._utils", "_rebuild_parameter")
    for target in (rebuild, storage("0", 1)):
        evil = dump({"w": Raw(_emit(target) + _emit((None, {"__defaults__": (1, 2)}))
                              + pickle.BUILD)})
        path = write_zip(tmp_path / "evil.pth", evil, {"0": b"\0" * 4})
        assert_refused(load_state_dict, path, match="state")
    assert torch_checkpoint._rebuild_parameter.__defaults__ == defaults
    object_pickle, raw = small_state()
    check_small_state(load_state_dict(write_zip(tmp_path / "ok.pth", object_pickle, raw)))


def test_storage_classes_resolve_to_no_callable(tmp_path):
    # `torch.FloatStorage` is admitted as a type tag only: calling it is refused.
    evil = dump({"w": Call(Global("torch", "FloatStorage"), 10)})
    assert_refused(load_state_dict, write_zip(tmp_path / "evil.pth", evil, {}))


def test_memo_index_bomb_is_refused_before_unpickling(tmp_path):
    # LONG_BINPUT 2**32 - 1 makes CPython's unpickler allocate and zero a 64 GB memo.
    bomb = pickle.PROTO + b"\x02" + pickle.NONE + pickle.LONG_BINPUT + b"\xff\xff\xff\xff."
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(bomb)
    for path in (legacy, write_zip(tmp_path / "zip.pth", bomb, {})):
        code, output = run_isolated(path, memory_gb=2)
        assert code == 0 and "memo" in output, output


# --- item 2: no read outside a storage ---------------------------------------------


def _one_tensor_file(tmp_path, offset, size, stride, numel=2, layout="zip", kind="FloatStorage"):
    itemsize = np.dtype(torch_checkpoint._STORAGE_DTYPES[kind]).itemsize
    raw = (np.arange(numel, dtype="<u8") + 1).astype("<u8").tobytes()[: numel * itemsize]
    raw = raw.ljust(numel * itemsize, b"\1")
    object_pickle = dump({"head.weight": tensor(storage("0", numel, kind), offset, size, stride)})
    if layout == "zip":
        return write_zip(tmp_path / "t.pth", object_pickle, {"0": raw})
    return write_legacy(tmp_path / "t.pth", object_pickle, {"0": (numel, raw)})


@pytest.mark.parametrize("layout", ["zip", "legacy"])
@pytest.mark.parametrize(
    "offset, size, stride",
    [
        (0, (8,), (1,)),  # a 2-float storage declared as 8 floats
        (2, (1,), (1,)),  # offset at the end
        (1, (2,), (1,)),  # runs one past the end
        (0, (2, 2), (1, 1)),  # strides reach index 2
        (-1, (1,), (1,)),  # negative offset
        (1, (2,), (-1,)),  # negative stride
        (0, (-1,), (1,)),  # negative size
        (0, (4,), (0,)),  # a zero-stride view larger than its storage
        (0, (1, 2), (1,)),  # size and stride of different lengths
        (0.5, (1,), (1,)),  # not integers
        (0, ("1",), (1,)),
        (2, (), ()),  # a scalar past the end
    ],
)
def test_views_outside_the_storage_are_refused(tmp_path, layout, offset, size, stride):
    path = _one_tensor_file(tmp_path, offset, size, stride, layout=layout)
    assert_refused(load_state_dict, path, match="'head.weight'")


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_huge_stride_is_refused_without_crashing(tmp_path, layout):
    path = _one_tensor_file(tmp_path, 0, (2, 2), (1, 2**40), layout=layout)
    code, output = run_isolated(path)
    assert code == 0 and "head.weight" in output, f"exit code {code}: {output}"


def _expected_view(numel, offset, size, stride):
    """The view computed element by element, or None when it leaves the storage."""
    ints = [offset, *size, *stride]
    if len(size) != len(stride) or any(value < 0 for value in ints):
        return None
    count = int(np.prod(size, dtype=object)) if size else 1
    if int(np.prod([n for n in size if n], dtype=object)) * 8 >= 2**63:
        return None  # more bytes than numpy can address, even when empty
    if count == 0:
        return np.zeros(size, "<u8") if offset <= numel else None
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= numel or count > numel:
        return None
    flat = np.arange(numel, dtype="<u8") + 1
    out = np.empty(size, "<u8")
    for index in np.ndindex(*size):
        out[index] = flat[offset + sum(i * s for i, s in zip(index, stride, strict=True))]
    return out


def _mostly_small(low, high, wild):
    """Small non-negative integers three times in four, else anything in [low, high] or wild."""
    small = st.integers(0, 4)
    return small | small | st.integers(low, high) | st.sampled_from(wild)


@FUZZ
@given(
    numel=st.integers(0, 24),
    offset=_mostly_small(-2, 30, [2**62, 2**70]),
    shape=st.lists(st.tuples(_mostly_small(-2, 6, [2**31, 2**63, 2**64 + 1]),
                             _mostly_small(-1, 8, [2**40, 2**62])),
                   max_size=3),
    layout=st.sampled_from(["zip", "legacy"]),
)
def test_views_match_an_element_by_element_oracle(tmp_path, numel, offset, shape, layout):
    size = tuple(n for n, _ in shape)
    stride = tuple(s for _, s in shape)
    expected = _expected_view(numel, offset, size, stride)
    path = _one_tensor_file(tmp_path, offset, size, stride, numel=numel, layout=layout,
                            kind="LongStorage")
    event("refused" if expected is None else "read")
    if expected is None:
        assert_refused(load_state_dict, path, match="'head.weight'")
    else:
        got = load_state_dict(path)["head.weight"]
        assert got.dtype == np.dtype("int64") and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected.astype("int64"))


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_storage_bytes_must_match_the_declared_elements(tmp_path, layout):
    object_pickle = dump({"w": tensor(storage("0", 1), 0, (1,), (1,))})
    raw = b"\1" * 6  # 1.5 floats
    if layout == "zip":
        path = write_zip(tmp_path / "t.pth", object_pickle, {"0": raw})
        error = assert_refused(load_state_dict, path, match="multiple of 4")
    else:
        path = write_legacy(tmp_path / "t.pth", object_pickle, {"0": (2, raw)})
        error = assert_refused(load_state_dict, path, match="'0'")
    assert "storage" in str(error).lower()


@pytest.mark.parametrize(
    "kind", ["BFloat16Storage", "Storage", "UntypedStorage", "QInt8Storage", "ObjectStorage"]
)
def test_unknown_storage_types_are_refused(tmp_path, kind):
    object_pickle = dump({"w": tensor(storage("0", 1, kind), 0, (1,), (1,))})
    path = write_zip(tmp_path / "t.pth", object_pickle, {"0": b"\0" * 8})
    assert_refused(load_state_dict, path, match="FloatStorage")


def test_missing_zip_member_is_named(tmp_path):
    object_pickle = dump({"w": tensor(storage("7", 1), 0, (1,), (1,))})
    path = write_zip(tmp_path / "t.pth", object_pickle, {"0": b"\0" * 4})
    assert_refused(load_state_dict, path, match="archive/data/7")


@pytest.mark.parametrize("keys", [["0", "9"], [], "0", ["0", "0", "1"]])
def test_legacy_key_list_must_name_the_storages(tmp_path, keys):
    object_pickle = dump({"a": tensor(storage("0", 1), 0, (1,), (1,)),
                          "b": tensor(storage("1", 1), 0, (1,), (1,))})
    storages = {"0": (1, b"\0" * 4), "1": (1, b"\0" * 4)}
    path = write_legacy(tmp_path / "t.pth", object_pickle, storages, keys=dump(keys))
    assert_refused(load_state_dict, path, match="storage")


def test_conflicting_storage_declarations_are_refused(tmp_path):
    object_pickle = dump({"a": tensor(storage("0", 2), 0, (1,), (1,)),
                          "b": tensor(storage("0", 2, "LongStorage"), 0, (1,), (1,))})
    path = write_zip(tmp_path / "t.pth", object_pickle, {"0": b"\0" * 8})
    assert_refused(load_state_dict, path, match="'0'")


def test_big_endian_files_are_refused(tmp_path):
    object_pickle, raw = small_state()
    path = tmp_path / "t.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", object_pickle)
        archive.writestr("archive/byteorder", b"big")
        for key, data in raw.items():
            archive.writestr(f"archive/data/{key}", data)
    assert_refused(load_state_dict, str(path), match="big-endian")


@pytest.mark.parametrize(
    "value",
    [
        storage("0", 1),  # a bare storage
        Global("torch", "FloatStorage"),  # a storage class
        Global("torch._utils", "_rebuild_tensor_v2"),  # an allowed function
    ],
)
def test_only_tensors_and_plain_data_come_back(tmp_path, value):
    path = write_zip(tmp_path / "t.pth", dump({"w": value}), {"0": b"\0" * 4})
    assert_refused(load_state_dict, path, match="'w'")


def test_cyclic_and_deep_structures_are_refused_shared_ones_read_once(tmp_path):
    cycle = dump(Raw(pickle.EMPTY_DICT + pickle.BINPUT + b"\0" + _emit("self")
                     + pickle.BINGET + b"\0" + pickle.SETITEM))
    assert_refused(load_state_dict, write_zip(tmp_path / "a.pth", cycle, {}), match="itself")
    # 60 levels of [x, x]: 2**60 leaves if walked naively, 60 lists when shared.
    body = _emit(1.0)
    for level in range(60):
        body += pickle.BINPUT + bytes([level]) + pickle.POP + pickle.MARK
        body += pickle.BINGET + bytes([level]) + pickle.BINGET + bytes([level]) + pickle.LIST
    shared = dump(Raw(pickle.EMPTY_DICT + _emit("x") + body + pickle.SETITEM))
    state = load_state_dict(write_zip(tmp_path / "b.pth", shared, {}))
    node = state["x"]
    for _ in range(60):
        assert len(node) == 2 and node[0] is node[1]
        node = node[0]
    assert node == 1.0
    deep = dump(Raw(pickle.EMPTY_DICT + _emit("x") + pickle.EMPTY_LIST * 500
                    + pickle.APPEND * 499 + pickle.SETITEM))
    assert_refused(load_state_dict, write_zip(tmp_path / "c.pth", deep, {}), match="deeper")


# --- fuzzing -----------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=300),
       prefix=st.sampled_from([b"", b"PK\x03\x04", dump(LEGACY_MAGIC), b"\x80\x02"]))
def test_random_bytes_are_refused(tmp_path, data, prefix):
    path = tmp_path / "random.pth"
    path.write_bytes(prefix + data)
    assert_refused(load_state_dict, str(path))


@FUZZ
@given(data=st.binary(max_size=300), layout=st.sampled_from(["zip", "legacy"]))
def test_random_object_pickles_are_refused_or_read(tmp_path, data, layout):
    object_pickle = pickle.PROTO + b"\x02" + data
    if layout == "zip":
        path = write_zip(tmp_path / "r.pth", object_pickle, {})
    else:
        path = write_legacy(tmp_path / "r.pth", object_pickle, {})
    try:
        state = load_state_dict(path)
    except (ValueError, pickle.UnpicklingError) as error:
        event(f"refused: {type(error).__name__}")
        assert_refused(load_state_dict, path)
    else:
        event("read")
        assert isinstance(state, dict)


def test_truncations_of_small_files_are_refused(tmp_path):
    object_pickle, raw = small_state()
    storages = {key: (len(data) // 4, data) for key, data in raw.items()}
    for layout in ("zip", "legacy"):
        if layout == "zip":
            write_zip(tmp_path / "z.pth", object_pickle, raw)
            whole = (tmp_path / "z.pth").read_bytes()
        else:
            whole = legacy_bytes(object_pickle, storages)
        path = tmp_path / "cut.pth"
        # Every cut near both ends (headers, zip directory), every 7th in between.
        cuts = {*range(0, 64), *range(0, len(whole), 7), *range(len(whole) - 64, len(whole))}
        for cut in sorted(cuts):
            path.write_bytes(whole[:cut])
            assert_refused(load_state_dict, str(path))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True) | st.sampled_from([0.999999, 0.5]))
def test_truncated_real_checkpoint_is_refused(tmp_path, real_checkpoint, fraction):
    # Most cuts fall in the first 200 kB (headers, the object pickle, the first
    # storages); a few land anywhere in the 18 MB file.
    whole = real_checkpoint[1]
    span = len(whole) if fraction in (0.999999, 0.5) else 200_000
    path = tmp_path / "cut.pth"
    path.write_bytes(whole[: int(fraction * span)])
    assert_refused(load_state_dict, str(path))


def _hostile_value(draw, marker):
    kinds = ["float", "tensor", "payload", "global", "nested"]
    kind = draw(st.sampled_from(kinds))
    if kind == "float":
        return draw(st.floats(allow_nan=False))
    if kind == "tensor":
        numel = draw(st.integers(0, 6))
        return tensor(storage(draw(st.sampled_from(["0", "1", "9"])), numel,
                              draw(st.sampled_from(["FloatStorage", "LongStorage", "HalfStorage",
                                                    "BFloat16Storage"]))),
                      draw(st.integers(-1, 8)),
                      draw(st.lists(st.integers(-1, 4) | st.just(2**62), max_size=2)),
                      draw(st.lists(st.integers(-1, 4) | st.just(2**62), max_size=2)))
    if kind == "payload":
        return payload(marker)
    if kind == "global":
        return Call(Global(draw(st.sampled_from(["os", "builtins", "torch", "collections",
                                                 "torch._utils", "numpy"])),
                           draw(st.sampled_from(["system", "eval", "exec", "getattr",
                                                 "FloatStorage", "OrderedDict",
                                                 "_rebuild_tensor_v2", "__import__"]))),
                    f"open({str(marker)!r}, 'w').close()")
    return {"inner": _hostile_value(draw, marker)}


@FUZZ
@given(data=st.data(), layout=st.sampled_from(["zip", "legacy"]),
       flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=3))
def test_crafted_hostile_checkpoints_fail_cleanly(tmp_path, data, layout, flips):
    marker = tmp_path / f"ran-{os.getpid()}"
    count = data.draw(st.integers(1, 4))
    state = {f"k{i}": _hostile_value(data.draw, marker) for i in range(count)}
    raw = {"0": np.arange(4, dtype="<f4").tobytes(), "1": b"\x01" * 8}
    object_pickle = dump(state)
    if layout == "zip":
        buffer = io.BytesIO()
        write_zip(buffer, object_pickle, raw)
        whole = bytearray(buffer.getvalue())
    else:
        whole = bytearray(legacy_bytes(object_pickle, {"0": (4, raw["0"]), "1": (2, raw["1"])}))
    for position, value in flips:
        whole[position % len(whole)] = value
    path = tmp_path / "hostile.pth"
    path.write_bytes(bytes(whole))
    try:
        result = load_state_dict(str(path))
    except (ValueError, pickle.UnpicklingError) as error:
        event(f"refused: {type(error).__name__}")
        assert_refused(load_state_dict, str(path))
    else:
        event("read")
        for value in result.values():
            assert isinstance(value, (np.ndarray, float, dict)), type(value)
    assert not marker.exists()


@pytest.mark.parametrize("member", ["archive/data.pkl", "archive/data/0"])
def test_zip_bombs_are_refused_before_inflating(tmp_path, member, monkeypatch):
    """A member declaring far more bytes than it stores is refused unread."""
    numel = 16 << 20  # 64 MiB of float32 zeros deflate to about 64 KiB (ratio ~1000)
    object_pickle = dump({"w": tensor(storage("0", numel), 0, (1,), (1,))})
    storage_bytes = b"\0" * (4 * numel)
    if member.endswith("data.pkl"):
        object_pickle += b"\0" * (64 << 20)   # padding after STOP
        storage_bytes = b"\0" * 4
        object_pickle = object_pickle.replace(b"J" + np.array(numel, "<i4").tobytes(),
                                              b"J" + np.array(1, "<i4").tobytes(), 1)
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", object_pickle)
        archive.writestr("archive/data/0", storage_bytes)
    assert path.stat().st_size < 1 << 20
    inflated, read = [], zipfile.ZipFile.read
    monkeypatch.setattr(zipfile.ZipFile, "read",
                        lambda self, name, *a: inflated.append(name) or read(self, name, *a))
    assert_refused(load_state_dict, str(path), match="zip bomb")
    assert member not in inflated


def test_a_deflated_checkpoint_within_the_ratio_still_reads(tmp_path):
    object_pickle, raw = small_state()
    path = tmp_path / "deflated.pth"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", object_pickle)
        for key, data in raw.items():
            archive.writestr(f"archive/data/{key}", data)
    check_small_state(load_state_dict(str(path)))
