"""Reads PyTorch `.pth` / `.pt` state dicts into numpy arrays without torch.

Why hand-written: torch is not a tfft dependency (it is a multi-GB install),
yet some offline pretrained weights ship only as PyTorch checkpoints. A state
dict is a pickle that names a handful of torch functions and storage classes
plus raw little-endian storage bytes, so a small *restricted* unpickler can
rebuild every tensor as a numpy array.

Both on-disk layouts `torch.save` has used are read:

- the zip layout (torch >= 1.6): `<root>/data.pkl` plus one file per storage
  in `<root>/data/<key>`;
- the legacy layout (older torch): consecutive pickles (magic number,
  protocol version, system info, the object, the storage keys) followed by
  each storage's element count (int64) and raw bytes.

A checkpoint is untrusted input, so nothing in it runs and nothing outside
its bytes is read:

- every pickle is first walked opcode by opcode without running any
  (`pickletools.genops`), which refuses truncated arguments, copyreg
  extension codes (resolved from a process-wide cache that bypasses
  `find_class`) and memo indices that would make CPython allocate gigabytes;
- the plain-data pickles (magic number, protocol, system info, storage keys)
  are read by an unpickler that resolves no global at all; the object pickle
  by one that resolves only the entries of `_ALLOWED_GLOBALS` and the known
  `torch.*Storage` type tags, as objects whose state a pickle cannot set;
- every storage must be present, hold exactly its declared element count,
  and every tensor view (offset, size, stride) must lie inside its storage
  before a numpy view of it is built.

Malformed pickles and refused globals raise `pickle.UnpicklingError`; a bad
layout, storage or view raises `ValueError` naming the storage or tensor.
"""

import io
import math
import pickle
import pickletools
import zipfile
from collections import OrderedDict

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype (little-endian).
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}

# Opcodes whose argument names a memo slot: CPython grows its memo array to the
# index, so an index far beyond the pickle's size is a memory bomb.
_MEMO_WRITES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
# Extension codes resolve through copyreg's process-wide cache without calling
# `find_class`; protocol-0 byte strings (Python 2 only) go through escape
# decoding. torch.save writes neither.
_REFUSED_OPCODES = frozenset({"EXT1", "EXT2", "EXT4", "STRING"})
# How deep dicts and lists may nest in a checkpoint (torch writes two or three levels).
_MAX_DEPTH = 100
_PLAIN_TYPES = (type(None), bool, int, float, str, bytes)
_MAX_BYTES = np.iinfo(np.intp).max
_MAX_INFLATION = 100  # largest uncompressed/compressed size ratio of a zip member


def _describe(value):
    """A short description of a pickled value that cannot blow up (no deep repr)."""
    if isinstance(value, (int, float, str, bytes)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 60 else f"{text[:57]}..."
    return f"a {type(value).__name__}"


class _Frozen:
    """An object the reader hands to the unpickler: a pickle cannot set its state."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(
            "Refusing to set the state of an internal object from a PyTorch "
            "checkpoint (BUILD on a storage, tensor or allowed function)."
        )


class _Allowed(_Frozen):
    """One admitted global: calls the reader's own stand-in function."""

    __slots__ = ("_function",)

    def __init__(self, function):
        self._function = function

    def __call__(self, *args):
        return self._function(*args)


class _StorageType(_Frozen):
    """A `torch.<Name>Storage` type tag: only names a dtype, cannot be called."""

    __slots__ = ("dtype", "name")

    def __init__(self, name):
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(
                f"Unsupported torch storage type. Expected one of "
                f"{sorted(_STORAGE_DTYPES)}. Received: torch.{name}"
            )
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage(_Frozen):
    """A storage whose bytes are filled in after the pickle is read."""

    __slots__ = ("array", "dtype", "key", "name", "numel")

    def __init__(self, key, storage_type, numel):
        self.key = key
        self.name = storage_type.name
        self.dtype = storage_type.dtype
        self.numel = numel
        self.array = None


class _TensorRef(_Frozen):
    """A tensor as pickled: storage, offset, size and stride, all unchecked yet."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride

    def to_numpy(self, name):
        """Copies the view out of its storage after checking that it lies inside it."""
        storage = self.storage
        if not isinstance(storage, _Storage):
            raise ValueError(
                f"Tensor {name!r} in the PyTorch checkpoint does not refer to a storage. "
                f"Received: {_describe(storage)}"
            )
        offset, size, stride = self.offset, self.size, self.stride
        valid = (
            _is_index(offset)
            and isinstance(size, (tuple, list))
            and isinstance(stride, (tuple, list))
            and len(size) == len(stride)
            and all(_is_index(value) for value in (*size, *stride))
        )
        if not valid:
            raise ValueError(
                f"Tensor {name!r} in the PyTorch checkpoint has an invalid view. Expected a "
                "non-negative integer offset and equally long tuples of non-negative integer "
                f"sizes and strides. Received: offset={_describe(offset)}, "
                f"size={_describe_ints(size)}, stride={_describe_ints(stride)}"
            )
        numel = storage.numel
        count = math.prod(size)
        # numpy's own limit, which also applies to an empty shape such as (0, 2**62).
        if math.prod(n for n in size if n) * storage.dtype.itemsize > _MAX_BYTES:
            raise ValueError(
                f"Tensor {name!r} declares a shape too large for any array. "
                f"Received: size={tuple(size)}"
            )
        if count == 0:
            if offset > numel:
                raise ValueError(
                    f"Tensor {name!r} starts at element {offset} of storage {storage.key!r}, "
                    f"which holds {numel} elements."
                )
            return np.zeros(size, dtype=storage.dtype)
        # Exact Python integers: no overflow however large the pickled values are.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= numel or count > numel:
            raise ValueError(
                f"Tensor {name!r} reads outside its storage {storage.key!r}: the view "
                f"(offset={offset}, size={tuple(size)}, stride={tuple(stride)}) reaches "
                f"element {last} and holds {count} elements, but the storage holds {numel}. "
                "Expected offset + sum((size - 1) * stride) < storage elements, and no more "
                "elements than the storage (expanded views are not read)."
            )
        flat = storage.array
        if not size:
            return np.array(flat[offset])
        itemsize = flat.dtype.itemsize
        # A dimension of size 1 never moves along its stride, which may be any size.
        strides = [s * itemsize if n > 1 else 0 for n, s in zip(size, stride, strict=True)]
        view = np.lib.stride_tricks.as_strided(
            flat[offset:], shape=tuple(size), strides=strides, writeable=False
        )
        return np.array(view, order="C", copy=True)


def _is_index(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _describe_ints(values):
    if isinstance(values, (tuple, list)) and len(values) <= 8:
        return "(" + ", ".join(_describe(value) for value in values) + ")"
    return _describe(values)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


def _ordered_dict(*args):
    return OrderedDict(*args)


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles plain data: no global (class, function) and no persistent id resolves."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name} from a PyTorch checkpoint: this pickle "
            "holds plain data only (magic number, protocol, system info or storage keys)."
        )

    def persistent_load(self, pid):
        raise pickle.UnpicklingError(
            "Refusing a persistent id in a PyTorch checkpoint pickle that holds plain data only."
        )


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict: only `_ALLOWED_GLOBALS` and storage type tags resolve."""

    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _Allowed(_ALLOWED_GLOBALS[(module, name)])
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name} from a PyTorch checkpoint: only "
            "tensors, parameters and (ordered) dicts of them are read."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(
                "Unsupported persistent id in a PyTorch checkpoint. Expected ('storage', "
                f"torch.<Type>Storage, key, location, element count). Received: {_describe(pid)}"
            )
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(
                f"A storage's type must be a torch storage class such as torch.FloatStorage. "
                f"Received: {_describe(storage_type)}"
            )
        if not isinstance(key, (str, int)) or isinstance(key, bool) or not _is_index(numel):
            raise pickle.UnpicklingError(
                "A storage needs a str or int key and a non-negative integer element count. "
                f"Received: key={_describe(key)}, count={_describe(numel)}"
            )
        if len(pid) == 6 and pid[5] is not None:
            raise pickle.UnpicklingError("Storage views (pre-1.0 torch checkpoints) are not read.")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type, numel)
        elif storage.dtype != storage_type.dtype or storage.numel != numel:
            raise pickle.UnpicklingError(
                f"Storage {key!r} is declared twice with different contents: "
                f"{storage.numel} x {storage.name} and {numel} x {storage_type.name}."
            )
        return storage


def _pickle_end(data, start, what):
    """Walks one pickle's opcodes without running any; returns where it ends."""
    stream = io.BytesIO(data)
    stream.seek(start)
    try:
        for count, (opcode, arg, _position) in enumerate(pickletools.genops(stream)):
            if opcode.name in _REFUSED_OPCODES:
                raise pickle.UnpicklingError(
                    f"Refusing the {what}: it uses the {opcode.name} opcode (a copyreg "
                    "extension code or a protocol-0 byte string), which torch.save never writes."
                )
            if opcode.name in _MEMO_WRITES and arg > count:
                raise pickle.UnpicklingError(
                    f"Refusing the {what}: memo index {arg} at opcode {count} is larger than "
                    "any pickler writes (it would make the unpickler allocate a huge memo)."
                )
    except pickle.UnpicklingError:
        raise
    except Exception as error:  # genops reports malformed bytes with several types
        raise pickle.UnpicklingError(
            f"The {what} is not a valid pickle: {type(error).__name__}: {error}"
        ) from error
    return stream.tell()


def _unpickle(data, start, make_unpickler, what):
    """Checks, then unpickles one pickle starting at `data[start]`; returns (object, end)."""
    end = _pickle_end(data, start, what)
    unpickler = make_unpickler(io.BytesIO(data[start:end]))
    try:
        return unpickler.load(), end
    except pickle.UnpicklingError:
        raise
    except Exception as error:  # wrong arguments to an allowed function, bad BUILD, ...
        raise pickle.UnpicklingError(
            f"The {what} is malformed: {type(error).__name__}: {error}"
        ) from error


def _path_name(path):
    return "/".join(str(part) for part in path)


def _materialise(obj, path, done, active):
    """Rebuilds dicts and lists with numpy arrays for tensors; refuses anything else.

    Shared containers are rebuilt once (`done`), so a pickle that references a
    list many times cannot make the walk exponential; `active` catches cycles.
    """
    if isinstance(obj, _TensorRef):
        return obj.to_numpy(_path_name(path))
    if isinstance(obj, _PLAIN_TYPES):
        return obj
    if not isinstance(obj, (dict, list, tuple)):
        raise ValueError(
            f"Entry {_path_name(path)!r} of the PyTorch checkpoint is neither a tensor nor "
            f"plain data (dict, list, tuple, str, number). Received: {_describe(obj)}"
        )
    if id(obj) in done:
        return done[id(obj)]
    if id(obj) in active:
        raise ValueError(f"Entry {_path_name(path)!r} of the PyTorch checkpoint refers to itself.")
    if len(path) >= _MAX_DEPTH:
        raise ValueError(
            f"The PyTorch checkpoint nests deeper than {_MAX_DEPTH} levels at "
            f"{_path_name(path[:3])!r}..."
        )
    active.add(id(obj))
    if isinstance(obj, dict):
        result = OrderedDict()
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise ValueError(
                    f"Keys in a PyTorch checkpoint must be str or int. Received: "
                    f"{_describe(key)} under {_path_name(path)!r}"
                )
            result[key] = _materialise(value, (*path, key), done, active)
    else:
        items = [_materialise(value, (*path, i), done, active) for i, value in enumerate(obj)]
        result = items if isinstance(obj, list) else tuple(items)
    active.discard(id(obj))
    done[id(obj)] = result
    return result


def _storage_size_error(storage, nbytes, where):
    itemsize = storage.dtype.itemsize
    expected = storage.numel * itemsize
    if nbytes % itemsize:
        problem = f"which is not a multiple of {itemsize} (the size of one {storage.name} element)"
    else:
        problem = f"but it declares {storage.numel} elements of {itemsize} bytes ({expected})"
    return ValueError(f"Storage {storage.key!r} {where} holds {nbytes} bytes, {problem}.")


def _read_member(archive, path, name):
    info = archive.getinfo(name)
    # `torch.save` stores members uncompressed; a member that would inflate far
    # beyond its bytes on disk is a zip bomb, refused before it is decompressed
    # (zipfile reads no more than the declared size).
    if info.file_size > max(_MAX_INFLATION * info.compress_size, 1 << 20):
        raise ValueError(
            f"{path!r}: {name!r} declares {info.file_size} bytes from {info.compress_size} "
            f"compressed (more than {_MAX_INFLATION}x): refused as a possible zip bomb. "
            "PyTorch writes checkpoint members uncompressed."
        )
    try:
        return archive.read(name)
    except Exception as error:  # zipfile reports damage with many exception types
        raise ValueError(
            f"{path!r}: cannot read {name!r} from the zip archive, which is damaged: "
            f"{type(error).__name__}: {error}"
        ) from error


def _read_zip(path, file):
    try:
        archive = zipfile.ZipFile(file)
    except Exception as error:  # BadZipFile and the errors of malformed headers
        raise ValueError(
            f"{path!r} is a damaged zip archive: {type(error).__name__}: {error}"
        ) from error
    with archive:
        names = set(archive.namelist())
        pickles = sorted(n for n in names if n.endswith("/data.pkl") or n == "data.pkl")
        if len(pickles) != 1:
            raise ValueError(
                f"{path!r} is a zip file but not a PyTorch checkpoint: expected exactly one "
                f"data.pkl inside. Received entries: {sorted(names)[:5]}"
            )
        root = pickles[0][: -len("data.pkl")]
        if f"{root}byteorder" in names:
            order = _read_member(archive, path, f"{root}byteorder").strip()
            if order != b"little":
                raise ValueError(
                    f"{path!r} was saved on a big-endian machine ({order[:20]!r}); only "
                    "little-endian checkpoints are read."
                )
        storages = {}
        obj, _ = _unpickle(
            _read_member(archive, path, pickles[0]),
            0,
            lambda f: _StateDictUnpickler(f, storages),
            "object pickle (data.pkl)",
        )
        for key, storage in storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise ValueError(
                    f"{path!r} references storage {key!r}, but the archive has no member "
                    f"{member!r}."
                )
            expected = storage.numel * storage.dtype.itemsize
            declared = archive.getinfo(member).file_size
            if declared != expected:  # checked before decompressing anything
                raise _storage_size_error(storage, declared, f"({member!r})")
            raw = _read_member(archive, path, member)
            if len(raw) != expected:
                raise _storage_size_error(storage, len(raw), f"({member!r})")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj


def _read_legacy(path, data):
    try:
        magic, position = _unpickle(data, 0, _DataUnpickler, "magic-number pickle")
    except pickle.UnpicklingError as error:
        if "Refusing" in str(error):
            raise
        raise ValueError(
            f"{path!r} is not a PyTorch checkpoint: expected a zip archive or the legacy "
            f"torch.save layout, which starts with a pickled magic number ({error})"
        ) from error
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise ValueError(
            f"{path!r} is not a PyTorch checkpoint: expected a zip archive or the "
            f"legacy torch.save magic number. Received: first pickle {_describe(magic)}"
        )
    protocol, position = _unpickle(data, position, _DataUnpickler, "protocol-version pickle")
    if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
        raise ValueError(
            f"{path!r}: unsupported legacy torch.save protocol. Expected {_LEGACY_PROTOCOL}. "
            f"Received: {_describe(protocol)}"
        )
    sys_info, position = _unpickle(data, position, _DataUnpickler, "system-info pickle")
    if isinstance(sys_info, dict) and sys_info.get("little_endian", True) is not True:
        raise ValueError(
            f"{path!r} was saved on a big-endian machine; only little-endian checkpoints are read."
        )
    storages = {}
    obj, position = _unpickle(
        data, position, lambda f: _StateDictUnpickler(f, storages), "object pickle"
    )
    keys, position = _unpickle(data, position, _DataUnpickler, "storage-key pickle")
    if not isinstance(keys, list) or not all(isinstance(key, (str, int)) for key in keys):
        raise ValueError(
            f"{path!r}: the storage-key pickle must be a list of storage keys. "
            f"Received: {_describe(keys)}"
        )
    keys = [str(key) for key in keys]
    if len(set(keys)) != len(keys) or set(keys) != set(storages):
        raise ValueError(
            f"{path!r}: the storage-key list must name each storage the tensors use once. "
            f"Tensors use {sorted(storages)[:10]}; the list names {keys[:10]}"
        )
    for key in keys:
        storage = storages[key]
        header = data[position : position + 8]
        if len(header) != 8:
            raise ValueError(f"{path!r} is truncated before storage {key!r}.")
        numel = int.from_bytes(header, "little", signed=True)
        position += 8
        if numel != storage.numel:
            raise ValueError(
                f"{path!r}: storage {key!r} holds {numel} elements on disk, but the pickle "
                f"declares {storage.numel}."
            )
        nbytes = numel * storage.dtype.itemsize
        if position + nbytes > len(data):
            raise ValueError(
                f"{path!r} is truncated: storage {key!r} needs {nbytes} bytes, "
                f"{len(data) - position} remain."
            )
        storage.array = np.frombuffer(data, dtype=storage.dtype, count=numel, offset=position)
        position += nbytes
    return obj


def load_state_dict(path):
    """Reads a PyTorch checkpoint's tensors as numpy arrays, without torch.

    Nothing in the file runs, and every tensor must lie inside its storage;
    see the module docstring for what is checked.

    Args:
        path: str. A file written by `torch.save(state_dict, path)`, in the zip
            or the legacy layout.

    Returns:
        An `OrderedDict` from parameter name to `np.ndarray` (nested dicts and
        lists are kept as they are).

    Raises:
        pickle.UnpicklingError: a pickle in the file is malformed or names
            something other than tensors, parameters and dicts (which is never
            executed).
        ValueError: the file is not a PyTorch checkpoint, or a storage is
            missing or has the wrong size, or a tensor's view leaves its
            storage (the message names the tensor).

    Example:

    >>> weights = load_state_dict(tfft.assets.asset_path("efficientnet_lite0"))
    >>> weights["_conv_stem.weight"].shape
    (32, 3, 3, 3)
    """
    with open(path, "rb") as file:
        if zipfile.is_zipfile(file):
            file.seek(0)
            obj = _read_zip(path, file)
        else:
            file.seek(0)
            obj = _read_legacy(path, file.read())
    if not isinstance(obj, dict):
        raise ValueError(
            f"{path!r} holds {_describe(obj)}, not a state dict (a mapping from names to "
            "tensors)."
        )
    return _materialise(obj, (), {}, set())
