"""Reads PyTorch `.pth` / `.pt` state dicts into numpy arrays without torch.

Why hand-written: torch is not a tfft dependency (it is a multi-GB install),
yet some offline pretrained weights ship only as PyTorch checkpoints. A state
dict is a pickle that names a handful of torch functions and storage classes
plus raw little-endian storage bytes, so a small *restricted* unpickler can
rebuild every tensor as a numpy array. Restricted means that only the globals
listed in `_ALLOWED_GLOBALS` resolve; anything else in the pickle (arbitrary
code, custom classes) raises `pickle.UnpicklingError` instead of running.

Both on-disk layouts `torch.save` has used are read:

- the zip layout (torch >= 1.6): `<root>/data.pkl` plus one file per storage
  in `<root>/data/<key>`;
- the legacy layout (older torch): consecutive pickles (magic number,
  protocol version, system info, the object, the storage keys) followed by
  each storage's element count (int64) and raw bytes.
"""

import io
import pickle
import zipfile
from collections import OrderedDict

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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


class _StorageType:
    def __init__(self, name):
        if name not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(
                f"Unsupported torch storage type. Expected one of "
                f"{sorted(_STORAGE_DTYPES)}. Received: torch.{name}"
            )
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A storage whose bytes are filled in after the pickle is read."""

    def __init__(self, dtype, numel):
        self.dtype = dtype
        self.numel = numel
        self.array = None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self):
        flat = self.storage.array
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:],
            shape=self.size,
            strides=[s * itemsize for s in self.stride],
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *unused):
    return data


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, storages):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name} from a PyTorch checkpoint: only "
            "tensors, parameters and (ordered) dicts of them are read."
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise pickle.UnpicklingError(f"Unsupported persistent id in checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if view is not None:
            raise pickle.UnpicklingError("Storage views (pre-1.0 torch checkpoints) are not read.")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = _Storage(storage_type.dtype, int(numel))
        return self._storages[key]


def _materialise(obj):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return OrderedDict((k, _materialise(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v) for v in obj)
    return obj


def _read_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ValueError(
                f"{path!r} is a zip file but not a PyTorch checkpoint: no data.pkl inside. "
                f"Received entries: {names[:5]}"
            )
        root = pickles[0][: -len("data.pkl")]
        storages = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{root}data/{key}")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj


def _read_legacy(path):
    with open(path, "rb") as f:
        magic = pickle.load(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError(
                f"{path!r} is not a PyTorch checkpoint: expected a zip archive or the "
                f"legacy torch.save magic number. Received: first pickle {magic!r:.40}"
            )
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{path!r} was saved on a big-endian machine; it is not read.")
        storages = {}
        obj = _RestrictedUnpickler(f, storages).load()
        keys = pickle.load(f)
        for key in keys:
            storage = storages[str(key)]
            numel = int(np.frombuffer(f.read(8), dtype="<i8")[0])
            raw = f.read(numel * storage.dtype.itemsize)
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=numel)
    return obj


def load_state_dict(path):
    """Reads a PyTorch checkpoint's tensors as numpy arrays, without torch.

    Args:
        path: str. A file written by `torch.save(state_dict, path)`, in the zip
            or the legacy layout.

    Returns:
        An `OrderedDict` from parameter name to `np.ndarray` (nested dicts and
        lists are kept as they are).

    Raises:
        pickle.UnpicklingError: the pickle names something other than tensors,
            parameters and dicts, which is never executed.

    Example:

    >>> weights = load_state_dict(tfft.assets.asset_path("efficientnet_lite0"))
    >>> weights["_conv_stem.weight"].shape
    (32, 3, 3, 3)
    """
    obj = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    return _materialise(obj)
