"""Reads PyTorch checkpoints (``torch.save`` of a state dict) without torch.

`load_state_dict` turns one into ``{name: numpy.ndarray}``, in the file's
order, for both layouts that ``torch.save`` writes:

- the zip archive (PyTorch >= 1.6): ``<top>/data.pkl`` holds the pickled
  object, ``<top>/data/<key>`` the raw bytes of each storage, and a few small
  metadata members (``byteorder``, ``version``, ``.data/...``); every member
  is stored uncompressed;
- the legacy stream (PyTorch < 1.6, e.g. the 2017-2019 SE checkpoints):
  pickles of the magic number, the protocol version and the system info,
  then the pickled object, then a pickle of the list of storage keys, then
  for each key an int64 little-endian element count and the raw bytes.

Safety: the pickles are read by a restricted unpickler that resolves only
the few globals a state dict needs (ordered dicts, tensor and parameter
rebuilders, storage types, dtypes) and maps each to a harmless stand-in
defined here; torch is never imported and no code from the file runs.
The container is held to what PyTorch writes: no compressed, encrypted,
duplicated, unreferenced or unknown zip members, no gaps or overlaps between
them, no bytes after the end of either format; each pickle is walked opcode
by opcode first (at most `tensor_file.MAX_METADATA_BYTES`, memo indices as
a pickler writes them), since a few crafted bytes can make the unpickler
itself allocate GBs. Every tensor's offset, shape and strides
are checked against its storage, and the memory the tensors need against
``max_bytes``, before any tensor data is read (`keras_senet.tensor_file`).

bfloat16 tensors come back as float32 (exact: bfloat16 is the upper half of
a float32), since NumPy has no bfloat16.
"""

import collections
import io
import pickle
import pickletools
import struct
import zipfile

from keras_senet import tensor_file
from keras_senet.tensor_file import Bad
from keras_senet.tensor_file import CheckpointError  # noqa: F401 (re-export)
from keras_senet.tensor_file import TensorLocation
from keras_senet.tensor_file import itemsize

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

_DTYPES = tensor_file.DTYPES  # torch's dtype names are the canonical ones
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


# --- Harmless stand-ins for the globals a state dict pickle may name. ------


class _StandIn:
    """Base of the stand-ins: pickle's BUILD may not set attributes on them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise Bad(f"tries to set attributes on {self!r} (not allowed)")


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
            raise Bad(
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
        raise Bad(f"holds a tensor whose storage is a {kind}")
    if metadata and any(metadata.values()):
        raise Bad(
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
        raise Bad(
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
        raise Bad(f"holds a tensor of unsupported dtype {dtype!r}")
    return _tensor(storage, offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad, hooks, state=None):
    if not isinstance(data, _Tensor):
        raise Bad(f"holds a parameter of a {type(data).__name__}")
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
            raise Bad(
                f"refuses to load global {full_name!r} (only tensors, "
                "storages and ordered dicts are allowed)"
            )
        return _ALLOWED_GLOBALS[full_name]

    def persistent_load(self, pid):
        if self.storages is None or not isinstance(pid, tuple) or not pid:
            raise Bad(f"holds an unexpected persistent id {pid!r}")
        if pid[0] == "module":
            raise Bad(
                "holds a whole pickled nn.Module; only state dicts can be "
                "read (save `model.state_dict()` instead)"
            )
        if pid[0] != "storage" or len(pid) not in (5, 6):
            raise Bad(f"holds an invalid storage reference {pid!r}")
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _Constant) or type(numel) is not int:
            raise Bad(f"holds an invalid storage reference {pid!r}")
        key, dtype = str(key), storage_type.dtype
        if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise Bad(f"describes storage {key!r} in two different ways")
        if view is None:
            return _Storage(key, dtype, 0, numel)
        _view_key, start, view_numel = view
        if not (0 <= start and 0 <= view_numel and start + view_numel <= numel):
            raise Bad(f"holds a storage view {view!r} outside storage {key!r}")
        return _Storage(key, dtype, start, view_numel)


# --- Pickles: checked opcode by opcode before they are unpickled. ----------
#
# A few bytes of pickle can make the C unpickler allocate GBs: LONG_BINPUT
# with index 10**8 grows (and zero-fills) its memo table to 1.5 GB, BINBYTES8
# asks for its length before reading. `_checked_pickle` walks the opcodes with
# `pickletools` first, within ``limit`` bytes, refusing memo indices a
# pickler never writes; the unpickler then runs on those bytes only.


class _Bounded:
    """A file as `pickletools.genops` reads it: at most ``limit`` bytes."""

    def __init__(self, file, limit):
        self._file = file
        self._left = self._limit = limit

    def _take(self, n):
        if n < 0 or n > self._left:
            raise Bad(
                f"holds a pickle larger than {self._limit} bytes (real state "
                "dicts need well under 1 MiB); refused"
            )
        self._left -= n

    def read(self, n):
        self._take(n)
        return self._file.read(n)

    def readline(self):
        line = self._file.readline(self._left + 1)
        self._take(len(line))
        return line


def _checked_pickle(file, limit=None):
    """The bytes of the pickle at ``file``'s position, once checked."""
    if limit is None:
        limit = tensor_file.MAX_METADATA_BYTES
    start = file.tell()
    memo = 0  # picklers number the memo 0, 1, 2 ...
    try:
        for opcode, arg, _ in pickletools.genops(_Bounded(file, limit)):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                if arg > memo:
                    raise Bad(
                        f"holds a crafted pickle (memo index {arg} where a "
                        f"pickler writes at most {memo}); refused"
                    )
                memo += arg == memo
            elif opcode.name == "MEMOIZE":
                memo += 1
    except ValueError as error:  # what genops says of a bad or cut pickle
        raise Bad(f"is truncated or damaged (its pickle: {error})")
    length = file.tell() - start
    file.seek(start)
    return file.read(length)


def _unpickle(data, storages=None):
    try:
        return _Unpickler(io.BytesIO(data), storages).load()
    except (EOFError, pickle.UnpicklingError) as error:
        raise Bad(f"is truncated or damaged (its pickle: {error})")


# --- The zip container. ----------------------------------------------------

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_EOCD = struct.Struct("<IHHHHIIH")
_ZIP64_LOCATOR = struct.Struct("<IIQI")
_ZIP64_EOCD = struct.Struct("<IQHHIIQQQQ")
# What PyTorch writes besides data.pkl and the storages (small, metadata).
_METADATA_MEMBERS = ("byteorder", "version", ".format_version", ".storage_alignment")
_MAX_METADATA_MEMBER = 1 << 16
_MAX_MEMBERS = 1 << 20


def _zip_directory(file, size):
    """(offset, size, entries) of the central directory, from the end records.

    The end-of-central-directory record must end the file (no comment, no
    trailing bytes), preceded by PyTorch's zip64 records when present.
    """
    if size < _EOCD.size:
        raise Bad("is truncated or damaged (too short for a zip archive)")
    file.seek(max(0, size - (1 << 16) - _EOCD.size))
    tail = file.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise Bad("is truncated or damaged (its zip directory is unreadable)")
    if at + _EOCD.size != len(tail):
        raise Bad(
            f"has {len(tail) - at - _EOCD.size} bytes after its zip "
            "directory (a comment or trailing bytes; PyTorch writes none)"
        )
    _, _, _, _, entries, cd_size, cd_offset, _ = _EOCD.unpack(tail[at:])
    end = size - _EOCD.size
    locator = tail[at - _ZIP64_LOCATOR.size : at] if at >= _ZIP64_LOCATOR.size else b""
    if locator[:4] == b"PK\x06\x07":
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack(locator)
        file.seek(record_offset)
        record = file.read(_ZIP64_EOCD.size)
        if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise Bad("is truncated or damaged (its zip64 directory is unreadable)")
        (_, record_size, _, _, _, _, _, entries, cd_size, cd_offset) = (
            _ZIP64_EOCD.unpack(record)
        )
        if record_offset + 12 + record_size != end - _ZIP64_LOCATOR.size:
            raise Bad("is damaged (its zip64 end records do not fit together)")
        end = record_offset
    if cd_offset + cd_size != end:
        raise Bad(
            "is truncated or damaged (its zip directory does not end where "
            "the end record says)"
        )
    if cd_size > tensor_file.MAX_METADATA_BYTES or entries > _MAX_MEMBERS:
        raise Bad(
            f"has a zip directory of {cd_size} bytes and {entries} members, "
            f"more than the caps of {tensor_file.MAX_METADATA_BYTES} bytes "
            f"and {_MAX_MEMBERS} members; refused"
        )
    return cd_offset, cd_size, entries


def _audit_members(file, infos, cd_offset):
    """Checks that the members tile the archive as PyTorch writes them.

    Each member is stored (not compressed or encrypted), its local header
    agrees with the central directory, and members follow each other without
    gaps or overlaps (each followed by its data descriptor if it has one)
    from offset 0 up to the central directory. Returns ``{name: offset of
    its data}``.
    """
    names = [info.filename for info in infos]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise Bad(f"holds zip members more than once: {duplicated[:5]}")
    data_offsets = {}
    position = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.compress_type != zipfile.ZIP_STORED:
            raise Bad(
                f"holds the compressed zip member {info.filename!r} "
                f"(method {info.compress_type}); PyTorch stores every member "
                "uncompressed"
            )
        if info.flag_bits & 0x1 or info.compress_size != info.file_size:
            raise Bad(f"holds the encrypted or damaged zip member {info.filename!r}")
        if info.header_offset != position:
            what = "a gap" if info.header_offset > position else "an overlap"
            raise Bad(
                f"is damaged or crafted: {what} between zip members before "
                f"{info.filename!r} (offset {info.header_offset}, expected "
                f"{position})"
            )
        file.seek(position)
        header = file.read(_LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size:
            raise Bad("is truncated or damaged (a zip member header is cut)")
        (signature, _, flags, method, _, _, crc, csize, usize, name_length,
         extra_length) = _LOCAL_HEADER.unpack(header)
        raw_name = file.read(name_length)
        encoding = "utf-8" if flags & 0x800 else "cp437"
        if (
            signature != 0x04034B50
            or method != zipfile.ZIP_STORED
            or raw_name.decode(encoding, "replace") != info.orig_filename
        ):
            raise Bad(
                f"is damaged or crafted: the local header of zip member "
                f"{info.filename!r} does not match the zip directory"
            )
        start = position + _LOCAL_HEADER.size + name_length + extra_length
        position = start + info.file_size
        if flags & 0x8:  # sizes and CRC follow the data
            position += _data_descriptor(file, position, info)
        elif crc != info.CRC or (csize, usize) not in (
            (info.file_size, info.file_size), (0xFFFFFFFF, 0xFFFFFFFF)
        ):
            raise Bad(
                f"is damaged or crafted: the local header of zip member "
                f"{info.filename!r} does not match the zip directory"
            )
        data_offsets[info.filename] = start
    if position != cd_offset:
        raise Bad(
            f"has {cd_offset - position} bytes between its last zip member "
            "and its zip directory (PyTorch writes none)"
        )
    return data_offsets


def _data_descriptor(file, offset, info):
    """Length of the data descriptor at ``offset``, checked against ``info``."""
    file.seek(offset)
    raw = file.read(24)
    signed = raw[:4] == b"PK\x07\x08"
    body = raw[4:] if signed else raw
    for wide in (False, True):  # 4-byte sizes, then zip64's 8-byte ones
        layout = "<IQQ" if wide else "<III"
        if len(body) >= struct.calcsize(layout):
            values = struct.unpack_from(layout, body)
            if values == (info.CRC, info.file_size, info.file_size):
                return struct.calcsize(layout) + 4 * signed
    raise Bad(
        f"is damaged: the data descriptor of zip member {info.filename!r} "
        "does not match the zip directory"
    )


def parse_zip(file, size):
    """``(locations, checksums)`` of a zip checkpoint (see `tensor_file.load`)."""
    cd_offset, _, entries = _zip_directory(file, size)
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise Bad(f"is truncated or damaged (its zip directory: {error})")
    with archive:
        infos = archive.infolist()
        if len(infos) != entries:
            raise Bad("is damaged (its zip directory holds another member count)")
        pickles = [
            n for n in archive.namelist()
            if n.endswith("/data.pkl") and n.count("/") == 1
        ]
        if len(pickles) != 1:
            raise Bad(
                "is a zip archive but not a PyTorch checkpoint (expected one "
                f"'<folder>/data.pkl', found {len(pickles)})"
            )
        top = pickles[0][: -len("data.pkl")]
        data_offsets = _audit_members(file, infos, cd_offset)
        members = {info.filename: info for info in infos}
        for name, info in members.items():
            key = name[len(top):]
            if not name.startswith(top) or not (
                key in _METADATA_MEMBERS
                or key.startswith(".data/")
                or key.startswith("data/")
                or key == "data.pkl"
            ):
                raise Bad(
                    f"holds the zip member {name!r}, which PyTorch does not "
                    "write in a checkpoint"
                )
            if key != "data.pkl" and not key.startswith("data/") and (
                info.file_size > _MAX_METADATA_MEMBER
            ):
                raise Bad(f"holds an oversized metadata member {name!r}")
        byteorder = members.get(f"{top}byteorder")
        if byteorder is not None:
            order = archive.read(byteorder)
            if order != b"little":
                raise Bad(
                    f"was saved in {order[:16].decode('latin-1')!r} byte "
                    "order; only little-endian checkpoints are supported "
                    "(re-save it on a little-endian machine)"
                )
        info = members[pickles[0]]
        if info.file_size > tensor_file.MAX_METADATA_BYTES:
            raise Bad(
                f"holds a data.pkl of {info.file_size} bytes, more than "
                f"{tensor_file.MAX_METADATA_BYTES} (real state dicts need "
                "well under 1 MiB); refused"
            )
        storages = {}
        data = archive.read(info)
        pickled = _checked_pickle(io.BytesIO(data))
        if len(pickled) != len(data):
            raise Bad(
                f"has {len(data) - len(pickled)} bytes after the pickle in "
                "its data.pkl (PyTorch writes none)"
            )
        obj = _unpickle(pickled, storages)
    offsets = {}
    for key, (dtype, numel) in storages.items():
        member = f"{top}data/{key}"
        info = members.get(member)
        if info is None:
            raise Bad(f"lacks the data of storage {key!r} ({member})")
        expected = numel * itemsize(dtype)
        if info.file_size != expected:
            raise Bad(
                f"is truncated or damaged: expected {expected} bytes of "
                f"storage {key!r}, found {info.file_size}"
            )
        offsets[key] = data_offsets[member]
    unused = sorted(
        name for name in members
        if name.startswith(f"{top}data/") and name[len(top) + 5:] not in storages
    )
    if unused:
        raise Bad(
            f"holds storages no tensor uses ({unused[:5]}); PyTorch never "
            "writes those"
        )
    state_dict = _select_state_dict(obj)
    checksums = {}
    for tensor in state_dict.values():
        info = members[f"{top}data/{tensor.storage.key}"]
        checksums[(offsets[tensor.storage.key], info.file_size)] = info.CRC
    return _locations(state_dict, offsets), checksums


# --- The legacy stream. ----------------------------------------------------


def parse_legacy(file, size):
    """``(locations, checksums)`` of a legacy checkpoint (no checksums)."""

    def small_pickle():
        return _unpickle(_checked_pickle(file, 1 << 16))

    if small_pickle() != LEGACY_MAGIC_NUMBER:
        raise Bad(
            "is a pickle but not a PyTorch checkpoint (no PyTorch magic number)"
        )
    version = small_pickle()
    if version != LEGACY_PROTOCOL_VERSION:
        raise Bad(f"has unsupported legacy protocol version {version!r}")
    sys_info = small_pickle()
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise Bad(
            "was saved on a big-endian machine; only little-endian "
            "checkpoints are supported (re-save it on a little-endian machine)"
        )
    storages = {}
    obj = _unpickle(_checked_pickle(file), storages)
    keys = _unpickle(_checked_pickle(file))
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise Bad(f"has an invalid storage key list {keys!r:.100}")
    if len(set(keys)) != len(keys):
        raise Bad("lists a storage twice in its storage key list")
    offsets = {}
    position = file.tell()
    for key in keys:
        if key not in storages:
            raise Bad(f"lists storage {key!r}, which no tensor uses")
        dtype, numel = storages[key]
        file.seek(position)
        header = file.read(8)
        if len(header) < 8:
            raise Bad(f"is truncated: it ends before storage {key!r}")
        count = int.from_bytes(header, "little", signed=True)
        if count != numel:
            raise Bad(
                f"is damaged: storage {key!r} holds {count} elements, "
                f"expected {numel}"
            )
        expected = numel * itemsize(dtype)
        found = min(expected, size - position - 8)
        if found < expected:
            raise Bad(
                f"is truncated: expected {expected} bytes of storage "
                f"{key!r}, found {found}"
            )
        offsets[key] = position + 8
        position += 8 + expected
    missing = [key for key in storages if key not in offsets]
    if missing:
        raise Bad(f"lacks the data of storages {missing!r}")
    if position != size:
        raise Bad(
            f"has {size - position} trailing bytes after its last storage "
            "(PyTorch writes none)"
        )
    return _locations(_select_state_dict(obj), offsets), {}


# --- From stand-ins to tensor locations. -----------------------------------


def _describe(value):
    if isinstance(value, _Tensor):
        return "tensor"
    if isinstance(value, dict):
        return "dict"
    return type(value).__name__


def _select_state_dict(obj):
    if not isinstance(obj, dict):
        kind = _describe(obj)
        raise Bad(f"holds an object of type {kind}, not a state dict")
    if not all(isinstance(value, _Tensor) for value in obj.values()):
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, _Tensor):
            raise Bad(
                f"is not a state dict: entry {name!r} is of type "
                f"{_describe(value)}, not a tensor"
            )
    return obj


def _locations(state_dict, offsets):
    """``{name: TensorLocation}``, each checked against its storage."""
    locations = {}
    for name, tensor in state_dict.items():
        storage = tensor.storage
        storage_itemsize = itemsize(storage.dtype)
        view_start = offsets[storage.key] + storage.start * storage_itemsize
        view_bytes = storage.numel * storage_itemsize
        start = tensor.offset * itemsize(tensor.dtype)
        location = TensorLocation(
            tensor.dtype, tensor.shape, tensor.strides, view_start + start
        )
        if location.numel and start + location.span > view_bytes:
            raise Bad(
                f"is damaged: tensor {name!r} (offset {tensor.offset}, shape "
                f"{tensor.shape}, strides {tensor.strides}) reaches past the "
                f"end of storage {storage.key!r}"
            )
        locations[name] = location
    return locations


def parser_for(head):
    """The parser for a PyTorch file starting with ``head``, else None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return parse_zip
    if head[:1] == b"\x80":  # pickle protocol 2+
        return parse_legacy
    return None


def _sniff(head):
    parse = parser_for(head)
    if parse is None:
        raise tensor_file.describe_foreign(head, "PyTorch checkpoint")
    return parse


def load_state_dict(path, *, max_bytes=None, check=None):
    """Reads a PyTorch state dict file into NumPy arrays, without torch.

    Args:
        path: a ``str`` or ``os.PathLike``: a file written by ``torch.save``
            (zip or legacy format) holding a state dict, or a dict that holds
            one under ``"state_dict"`` or ``"model"``.
        max_bytes: the most memory the tensors may need, in bytes (see
            `keras_senet.state_dict.load_state_dict`); None for
            `tensor_file.DEFAULT_MAX_BYTES`.
        check: optional ``check({name: shape})``, called before any tensor
            data is read; what it raises propagates.

    Returns:
        ``{name: numpy.ndarray}`` in the file's order; each array is a
        C-contiguous copy in native byte order. bfloat16 becomes float32.

    Raises:
        CheckpointError: (a ValueError) for a missing, truncated, damaged,
            unsafe, too big or foreign file; the message names the path.
        ValueError: if an argument is malformed.
    """
    path, max_bytes = tensor_file.check_arguments(path, max_bytes, check)
    return tensor_file.load(path, _sniff, max_bytes=max_bytes, check=check)
