"""Reads PyTorch checkpoints (``torch.save`` of a state dict) without torch.

The published SE weights are PyTorch pickles. `load_state_dict` turns one
into ``{name: numpy.ndarray}``, in the file's order, for both layouts that
``torch.save`` writes:

- the zip archive (PyTorch >= 1.6): ``<top>/data.pkl`` holds the pickled
  object, ``<top>/data/<key>`` the raw bytes of each storage, and
  ``<top>/byteorder`` (optional) the byte order;
- the legacy stream (PyTorch < 1.6, e.g. the 2017-2019 SE checkpoints):
  pickles of the magic number, the protocol version and the system info,
  then the pickled object, then a pickle of the list of storage keys, then
  for each key an int64 little-endian element count and the raw bytes.

Safety: the pickles are read by a restricted unpickler that resolves only
the few globals a state dict needs (ordered dicts, tensor and parameter
rebuilders, storage types, dtypes) and maps each to a harmless stand-in
defined here; torch is never imported and no code from the file runs.
Every tensor's offset, shape and strides are checked against its storage
before its bytes are read.

bfloat16 tensors come back as float32 (exact: bfloat16 is the upper half of
a float32), since NumPy has no bfloat16.
"""

import collections
import io
import math
import os
import pickle
import zipfile

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# A tensor may be bigger than its storage only through stride-0 (expanded)
# dimensions; beyond this size such a tensor is refused rather than built.
_MAX_EXPANDED_BYTES = 1 << 30

# torch dtype name -> (NumPy dtype of the raw little-endian bytes, dtype of
# the returned array). The storage type names map onto these below.
_DTYPES = {
    "float32": ("<f4", "float32"),
    "float64": ("<f8", "float64"),
    "float16": ("<f2", "float16"),
    "bfloat16": ("<u2", "float32"),
    "int64": ("<i8", "int64"),
    "int32": ("<i4", "int32"),
    "int16": ("<i2", "int16"),
    "int8": ("i1", "int8"),
    "uint8": ("u1", "uint8"),
    "uint16": ("<u2", "uint16"),
    "uint32": ("<u4", "uint32"),
    "uint64": ("<u8", "uint64"),
    "bool": ("u1", "bool"),
    "complex64": ("<c8", "complex64"),
    "complex128": ("<c16", "complex128"),
}
_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}


class CheckpointError(ValueError):
    """A file is missing, damaged, unsafe or not a PyTorch state dict."""


class _Bad(Exception):
    """What is wrong with the file; `load_state_dict` adds the path."""


def _itemsize(dtype):
    return np.dtype(_DTYPES[dtype][0]).itemsize


# --- Harmless stand-ins for the globals a state dict pickle may name. ------


class _StandIn:
    """Base of the stand-ins: pickle's BUILD may not set attributes on them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise _Bad(f"tries to set attributes on {self!r} (not allowed)")


class _Global(_StandIn):
    """An allowed global that pickle may call (REDUCE)."""

    __slots__ = ("name", "_function")

    def __init__(self, name, function):
        self.name = name
        self._function = function

    def __call__(self, *args):
        return self._function(*args)

    def __repr__(self):
        return self.name


class _Constant(_StandIn):
    """A storage type or dtype: only ever an argument, never called."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name = name
        self.dtype = dtype

    def __repr__(self):
        return self.name


class _StateDict(collections.OrderedDict):
    """An OrderedDict; BUILD may only set the `_metadata` state dicts carry."""

    def __setstate__(self, state):
        if not isinstance(state, dict) or set(state) - {"_metadata"}:
            names = sorted(state) if isinstance(state, dict) else state
            raise _Bad(
                f"tries to set attributes {names!r} on an OrderedDict (only "
                "'_metadata' is allowed)"
            )


class _Storage(_StandIn):
    """A reference to ``numel`` elements of ``dtype`` from ``start`` on in
    the raw bytes of storage ``key`` (a legacy view starts past 0)."""

    __slots__ = ("key", "dtype", "start", "numel")

    def __init__(self, key, dtype, start, numel):
        self.key, self.dtype, self.start, self.numel = key, dtype, start, numel


class _Tensor(_StandIn):
    """A tensor still to be read: its storage, dtype, offset, shape, strides."""

    __slots__ = ("storage", "dtype", "offset", "shape", "strides")

    def __init__(self, storage, dtype, offset, shape, strides):
        self.storage, self.dtype = storage, dtype
        self.offset, self.shape, self.strides = offset, shape, strides


def _tensor(storage, offset, size, stride, dtype=None, metadata=None):
    """A `_Tensor` after checking what the pickle passed to a rebuilder."""
    if not isinstance(storage, _Storage):
        kind = type(storage).__name__
        raise _Bad(f"holds a tensor whose storage is a {kind}")
    if metadata and any(metadata.values()):
        raise _Bad(
            f"holds a tensor with lazy conj/neg bits {metadata!r} (call "
            ".resolve_conj() / .resolve_neg() before saving)"
        )
    layout = (offset, size, stride)
    if (
        not isinstance(size, tuple)
        or not isinstance(stride, tuple)
        or len(size) != len(stride)
        or not all(type(d) is int and d >= 0 for d in (offset, *size, *stride))
    ):
        raise _Bad(
            "holds a tensor with an invalid layout (offset, size, stride) = "
            f"{layout!r}"
        )
    return _Tensor(storage, dtype or storage.dtype, offset, size, stride)


# Stand-ins for torch._utils' rebuilders, with their signatures. v1 is what
# PyTorch 0.2-0.3 wrote; v3 carries the dtype (uint16 ...) separately.
def _rebuild_tensor(storage, offset, size, stride):
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage, offset, size, stride, requires_grad, hooks, metadata=None
):
    return _tensor(storage, offset, size, stride, None, metadata)


def _rebuild_tensor_v3(
    storage, offset, size, stride, requires_grad, hooks, dtype, metadata=None
):
    if not isinstance(dtype, _Constant):
        raise _Bad(f"holds a tensor of unsupported dtype {dtype!r}")
    return _tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    if not isinstance(data, _Tensor):
        raise _Bad(f"holds a parameter of a {type(data).__name__}")
    return data


def _allowed_globals():
    table = {
        "collections.OrderedDict": _StateDict,
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    }
    table = {name: _Global(name, fn) for name, fn in table.items()}
    for storage_type, dtype in _STORAGE_TYPES.items():
        name = f"torch.{storage_type}"
        table[name] = _Constant(name, dtype)
    table["torch.storage.UntypedStorage"] = table["torch.UntypedStorage"]
    for dtype in _DTYPES:
        table[f"torch.{dtype}"] = _Constant(f"torch.{dtype}", dtype)
    return table


_ALLOWED_GLOBALS = _allowed_globals()


class _Unpickler(pickle.Unpickler):
    """Resolves only `_ALLOWED_GLOBALS`; records the storages it meets."""

    def __init__(self, file, storages=None):
        super().__init__(file, encoding="utf-8")
        self.storages = storages  # key -> (dtype, numel) of the whole storage

    def find_class(self, module, name):
        full_name = f"{module}.{name}"
        if full_name not in _ALLOWED_GLOBALS:
            raise _Bad(
                f"refuses to load global {full_name!r} (only tensors, "
                "storages and ordered dicts are allowed)"
            )
        return _ALLOWED_GLOBALS[full_name]

    def persistent_load(self, pid):
        if self.storages is None or not isinstance(pid, tuple) or not pid:
            raise _Bad(f"holds an unexpected persistent id {pid!r}")
        if pid[0] == "module":
            raise _Bad(
                "holds a whole pickled nn.Module; only state dicts can be "
                "read (save `model.state_dict()` instead)"
            )
        if pid[0] != "storage" or len(pid) not in (5, 6):
            raise _Bad(f"holds an invalid storage reference {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _Constant) or type(numel) is not int:
            raise _Bad(f"holds an invalid storage reference {pid!r}")
        key, dtype = str(key), storage_type.dtype
        if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise _Bad(f"describes storage {key!r} in two different ways")
        if view is None:
            return _Storage(key, dtype, 0, numel)
        _view_key, start, view_numel = view
        if not (0 <= start and 0 <= view_numel and start + view_numel <= numel):
            raise _Bad(f"holds a storage view {view!r} outside storage {key!r}")
        return _Storage(key, dtype, start, view_numel)


# --- The two container formats. --------------------------------------------


def _read_zip(file):
    try:
        archive = zipfile.ZipFile(file)
    except zipfile.BadZipFile:
        raise _Bad("is truncated or damaged (its zip directory is unreadable)")
    with archive:
        pickles = [
            name
            for name in archive.namelist()
            if name.endswith("/data.pkl") and name.count("/") == 1
        ]
        if len(pickles) != 1:
            raise _Bad(
                "is a zip archive but not a PyTorch checkpoint (expected one "
                f"'<folder>/data.pkl', found {len(pickles)})"
            )
        top = pickles[0][: -len("data.pkl")]
        if f"{top}byteorder" in archive.namelist():
            byteorder = archive.read(f"{top}byteorder")
            if byteorder != b"little":
                raise _Bad(
                    f"was saved in {byteorder[:16].decode('latin-1')!r} byte "
                    "order; only little-endian checkpoints are supported "
                    "(re-save it on a little-endian machine)"
                )
        storages = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        buffers = {}
        for key, (dtype, numel) in storages.items():
            member = f"{top}data/{key}"
            try:
                found = archive.getinfo(member).file_size
            except KeyError:
                raise _Bad(f"lacks the data of storage {key!r} ({member})")
            expected = numel * _itemsize(dtype)
            if found != expected:
                raise _Bad(
                    f"is truncated or damaged: expected {expected} bytes of "
                    f"storage {key!r}, found {found}"
                )
            buffers[key] = archive.read(member)
    return obj, buffers


def _read_legacy(file, file_size):
    def small_pickle():
        return _Unpickler(file).load()

    if small_pickle() != LEGACY_MAGIC_NUMBER:
        raise _Bad(
            "is a pickle but not a PyTorch checkpoint (no PyTorch magic number)"
        )
    version = small_pickle()
    if version != LEGACY_PROTOCOL_VERSION:
        raise _Bad(f"has unsupported legacy protocol version {version!r}")
    sys_info = small_pickle()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise _Bad(
            "was saved on a big-endian machine; only little-endian "
            "checkpoints are supported (re-save it on a little-endian machine)"
        )
    storages = {}
    obj = _Unpickler(file, storages).load()
    keys = small_pickle()
    if not isinstance(keys, list):
        raise _Bad(f"has an invalid storage key list {keys!r}")
    buffers = {}
    for key in keys:
        if key not in storages:
            raise _Bad(f"lists storage {key!r}, which no tensor uses")
        dtype, numel = storages[key]
        header = file.read(8)
        if len(header) < 8:
            raise _Bad(f"is truncated: it ends before storage {key!r}")
        count = int.from_bytes(header, "little", signed=True)
        if count != numel:
            raise _Bad(
                f"is damaged: storage {key!r} holds {count} elements, "
                f"expected {numel}"
            )
        expected = numel * _itemsize(dtype)
        found = min(expected, file_size - file.tell())
        if found < expected:
            raise _Bad(
                f"is truncated: expected {expected} bytes of storage "
                f"{key!r}, found {found}"
            )
        buffers[key] = file.read(expected)
    missing = [key for key in storages if key not in buffers]
    if missing:
        raise _Bad(f"lacks the data of storages {missing!r}")
    return obj, buffers


def _sniff(head):
    """'zip' or 'legacy' from the first bytes, else raises `_Bad`."""
    if not head:
        raise _Bad("is empty")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head[0] == 0x80:  # pickle protocol 2+
        return "legacy"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] == b"<":
        raise _Bad(
            "is not a PyTorch checkpoint (looks like an HTML page: a failed "
            "download often saves the server's error page; delete the file "
            "and download it again)"
        )
    sample = head.decode("utf-8", errors="replace")
    printable = sum(
        c != "\ufffd" and (c.isprintable() or c in "\t\r\n") for c in sample
    )
    if printable >= 0.95 * len(sample):
        first_line = (sample.strip().splitlines() or [""])[0][:60]
        raise _Bad(
            "is not a PyTorch checkpoint (looks like a text file, starting "
            f"{first_line!r})"
        )
    raise _Bad(
        "is not a PyTorch checkpoint (unrecognised header "
        f"{head[:8].hex(' ')})"
    )


# --- From stand-ins to NumPy. ----------------------------------------------


def _describe(value):
    if isinstance(value, _Tensor):
        return "tensor"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def _select_state_dict(obj):
    if not isinstance(obj, dict):
        kind = _describe(obj)
        raise _Bad(f"holds an object of type {kind}, not a state dict")
    if not all(isinstance(value, _Tensor) for value in obj.values()):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            raise _Bad(
                f"is not a state dict: entry {name!r} is of type "
                f"{_describe(value)}, not a tensor"
            )
    return obj


def _to_numpy(name, tensor, buffers):
    """Copies ``tensor`` out of its storage bytes, after checking its bounds."""
    raw_dtype, out_dtype = _DTYPES[tensor.dtype]
    raw_dtype = np.dtype(raw_dtype)
    itemsize = raw_dtype.itemsize
    storage = tensor.storage
    start = storage.start * _itemsize(storage.dtype)
    nbytes = storage.numel * _itemsize(storage.dtype)
    shape, strides = tensor.shape, tensor.strides
    numel = math.prod(shape)
    if numel == 0:
        return np.zeros(shape, out_dtype)
    last = tensor.offset + sum((n - 1) * s for n, s in zip(shape, strides))
    if (last + 1) * itemsize > nbytes:
        raise _Bad(
            f"is damaged: tensor {name!r} (offset {tensor.offset}, shape "
            f"{shape}, strides {strides}) reaches past the end of storage "
            f"{storage.key!r}"
        )
    if numel * itemsize > max(nbytes, _MAX_EXPANDED_BYTES):
        raise _Bad(f"holds an expanded tensor {name!r} of {numel} elements")
    base = np.frombuffer(
        buffers[storage.key], raw_dtype, nbytes // itemsize, start
    )
    view = np.lib.stride_tricks.as_strided(
        base[tensor.offset :],
        shape=shape,
        strides=[s * itemsize for s in strides],
        writeable=False,
    )
    array = view.astype(raw_dtype.newbyteorder("="), order="C")
    if tensor.dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if tensor.dtype == "bool":
        return array != 0
    return array.astype(out_dtype, copy=False)


def _load(path):
    with open(path, "rb") as file:
        kind = _sniff(file.read(512))
        file.seek(0)
        try:
            if kind == "zip":
                obj, buffers = _read_zip(file)
            else:
                size = os.fstat(file.fileno()).st_size
                obj, buffers = _read_legacy(file, size)
        except (EOFError, pickle.UnpicklingError) as error:
            raise _Bad(f"is truncated or damaged (its pickle: {error})")
    state_dict = _select_state_dict(obj)
    return {
        name: _to_numpy(name, tensor, buffers)
        for name, tensor in state_dict.items()
    }


def load_state_dict(path):
    """Reads a PyTorch state dict file into NumPy arrays, without torch.

    Args:
        path: a ``str`` or ``os.PathLike``: a file written by ``torch.save``
            (zip or legacy format) holding a state dict, or a dict that holds
            one under ``"state_dict"`` or ``"model"``.

    Returns:
        ``{name: numpy.ndarray}`` in the file's order; each array is a
        C-contiguous copy in native byte order. bfloat16 becomes float32.

    Raises:
        CheckpointError: (a ValueError) for a missing, truncated, damaged,
            unsafe or foreign file; the message names the path.
        ValueError: if ``path`` is not a str or PathLike.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            "`path` must be a str or os.PathLike naming a PyTorch checkpoint. "
            f"Received: path={path!r}"
        )
    path = os.fsdecode(os.fspath(path))
    try:
        return _load(path)
    except _Bad as error:
        raise CheckpointError(f"Checkpoint file {path!r} {error}") from None
    except OSError as error:
        raise CheckpointError(
            f"Checkpoint file {path!r} cannot be read: "
            f"{error.strerror or error}"
        ) from error
    except Exception as error:  # Anything else a hostile file can provoke.
        raise CheckpointError(
            f"Checkpoint file {path!r} is damaged or not a PyTorch checkpoint "
            f"({type(error).__name__}: {error})"
        ) from error
