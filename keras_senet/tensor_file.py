"""What every checkpoint reader shares: the error, the memory budget, the reads.

A reader (`keras_senet.torch_checkpoint`, `keras_senet.safetensors_file`)
parses a file's metadata into `TensorLocation` records (where each tensor's
bytes lie in the file, its dtype, shape and strides) without reading any
tensor data. `load` then, in this order:

1. calls the caller's ``check(shapes)`` with ``{name: shape}``, so a file of
   another model is refused before its data is read;
2. adds up what reading the tensors would allocate (each returned array, plus
   each temporary buffer a strided or converted tensor is read through) and
   refuses the file if that exceeds ``max_bytes``;
3. reads the tensors one at a time, each straight from the file into its
   array, so memory peaks near the size of the returned arrays.

`keras_senet.state_dict.load_state_dict` is the front door that picks the
reader; this module is the floor under the readers and uses NumPy only.
"""

import contextlib
import math
import os
import zlib

import numpy as np

# Default for `max_bytes`: what one file may make us allocate for its tensor
# data. The largest published SE checkpoint (seresnextaa201d_32x8d) needs
# about 0.6 GB in float32.
DEFAULT_MAX_BYTES = 2 << 30

# Cap on the metadata a reader parses (a pickle, a JSON header): real
# checkpoints have about 150 bytes per tensor (SENet-154: 150 kB for 1,144
# tensors); the cap bounds the memory a hostile one can make the parser use.
MAX_METADATA_BYTES = 16 << 20

# Canonical dtype name -> (NumPy dtype of the raw little-endian bytes, dtype
# of the returned array). bfloat16 becomes float32 (exact: bfloat16 is the
# upper half of a float32), since NumPy has no bfloat16; bool bytes are
# compared with 0.
DTYPES = {
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

_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, unsafe, too big or foreign.

    The message names the path and the problem.
    """


class Bad(Exception):
    """What is wrong with a file; `load` prefixes the path."""


def itemsize(dtype):
    """Bytes per stored element of canonical dtype ``dtype``."""
    return np.dtype(DTYPES[dtype][0]).itemsize


class TensorLocation:
    """Where one tensor's elements lie in the file.

    ``start`` is the file offset of its first element; element ``index``
    (a tuple) is at ``start + sum(index * strides) * itemsize``. Strides are
    in elements and non-negative, so the tensor's bytes lie within
    ``[start, start + span)``; the reader has checked that range against the
    file's own bounds.
    """

    __slots__ = ("dtype", "shape", "strides", "start", "span")

    def __init__(self, dtype, shape, strides, start):
        self.dtype = dtype
        self.shape = tuple(shape)
        self.strides = tuple(strides)
        self.start = start
        if self.numel:
            last = sum((n - 1) * s for n, s in zip(self.shape, self.strides))
            self.span = (last + 1) * itemsize(dtype)
        else:
            self.span = 0

    @property
    def numel(self):
        return math.prod(self.shape)

    @property
    def out_nbytes(self):
        return self.numel * np.dtype(DTYPES[self.dtype][1]).itemsize

    @property
    def contiguous(self):
        """Whether the elements are stored densely in C order."""
        expected = 1
        for n, s in zip(reversed(self.shape), reversed(self.strides)):
            if n != 1 and s != expected:
                return False
            expected *= n
        return True

    @property
    def direct(self):
        """Whether the bytes can be read straight into the returned array."""
        raw, out = DTYPES[self.dtype]
        return self.contiguous and np.dtype(raw) == np.dtype(out)

    @property
    def cost(self):
        """Bytes allocated to read it: the array, plus any staging buffer."""
        if not self.numel:
            return 0
        return self.out_nbytes + (0 if self.direct else self.span)


def check_arguments(path, max_bytes, check):
    """Validates `load`'s arguments; returns ``(path as str, max_bytes)``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            "`path` must be a str or os.PathLike naming a checkpoint file. "
            f"Received: path={path!r}"
        )
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES
    elif isinstance(max_bytes, bool) or not isinstance(
        max_bytes, (int, np.integer)
    ) or max_bytes < 0:
        raise ValueError(
            "`max_bytes` must be None or a non-negative int (a number of "
            f"bytes). Received: max_bytes={max_bytes!r}"
        )
    if check is not None and not callable(check):
        raise ValueError(
            "`check` must be None or a callable taking {name: shape}. "
            f"Received: check={check!r}"
        )
    return os.fsdecode(os.fspath(path)), int(max_bytes)


@contextlib.contextmanager
def _reporting(path, phase):
    """Turns whatever a damaged or hostile file provokes into CheckpointError.

    In the ``"metadata"`` phase everything counts, MemoryError included (the
    metadata is bounded, so running out of memory means a hostile file); in
    the ``"data"`` phase MemoryError is the machine's, not the file's.
    """
    try:
        yield
    except Bad as error:
        raise CheckpointError(f"Checkpoint file {path!r} {error}") from None
    except OSError as error:
        raise CheckpointError(
            f"Checkpoint file {path!r} cannot be read: "
            f"{error.strerror or error}"
        ) from error
    except MemoryError:
        if phase == "data":
            raise
        raise CheckpointError(
            f"Checkpoint file {path!r} is damaged or hostile: its metadata "
            "asks for more memory than is available"
        ) from None
    except Exception as error:  # anything else a hostile file provokes
        raise CheckpointError(
            f"Checkpoint file {path!r} is damaged or not a checkpoint "
            f"({type(error).__name__}: {error})"
        ) from error


def load(path, sniff, *, max_bytes, check):
    """Reads the tensors of the checkpoint at ``path``.

    Args:
        path: the file (already checked by `check_arguments`).
        sniff: ``sniff(head) -> parse``: picks the parser from the first
            512 bytes, or raises `Bad`. ``parse(file, size)`` returns
            ``(locations, checksums)``: ``{name: TensorLocation}`` in the
            order to return them, and ``{(start, size): crc32}`` of file
            regions whose CRC-32 the format records.
        max_bytes: the budget (see the module docstring).
        check: None or ``check({name: shape})``; what it raises propagates.

    Returns:
        ``{name: numpy.ndarray}``, each a C-contiguous, writeable array in
        native byte order.
    """
    with contextlib.ExitStack() as stack:
        with _reporting(path, "metadata"):
            file = stack.enter_context(open(path, "rb"))
            size = os.fstat(file.fileno()).st_size
            parse = sniff(file.read(512))
            file.seek(0)
            locations, checksums = parse(file, size)
        if check is not None:
            check({name: loc.shape for name, loc in locations.items()})
        needed = sum(loc.cost for loc in locations.values())
        if needed > max_bytes:
            raise CheckpointError(
                f"Checkpoint file {path!r} would need {_size(needed)} "
                f"({needed} bytes) of memory for its tensors, more than the "
                f"limit of {_size(max_bytes)} (max_bytes={max_bytes}); "
                "refused before reading any tensor data. Pass a larger "
                "`max_bytes` if the file is trusted."
            )
        with _reporting(path, "data"):
            return _read_all(file, locations, checksums)


def _read_all(file, locations, checksums):
    verified = set()
    arrays = {}
    for name, loc in locations.items():
        arrays[name] = _read_tensor(file, name, loc, checksums, verified)
    for region in checksums.keys() - verified:  # not read whole above
        _verify_crc(_crc_of_region(file, *region), checksums[region], region)
    return arrays


def _read_tensor(file, name, loc, checksums, verified):
    raw_dtype, out_dtype = (np.dtype(d) for d in DTYPES[loc.dtype])
    if not loc.numel:
        return np.zeros(loc.shape, out_dtype)
    if loc.direct:
        array = np.empty(loc.shape, out_dtype)
        raw = array
    else:
        raw = np.empty(loc.span // raw_dtype.itemsize, raw_dtype)
    _read_into(file, loc.start, raw, name)
    region = (loc.start, loc.span)
    if region in checksums and region not in verified:
        crc = zlib.crc32(raw.reshape(-1).view(np.uint8))
        _verify_crc(crc, checksums[region], region)
        verified.add(region)
    if loc.direct:
        return array
    view = np.lib.stride_tricks.as_strided(
        raw,
        shape=loc.shape,
        strides=[s * raw_dtype.itemsize for s in loc.strides],
        writeable=False,
    )
    if loc.dtype == "bfloat16":
        out = np.empty(loc.shape, np.uint32)
        np.left_shift(view, 16, out=out, dtype=np.uint32)
        return out.view(np.float32)
    if loc.dtype == "bool":
        return np.not_equal(view, 0)
    return np.array(view, dtype=out_dtype, order="C")


def _read_into(file, offset, array, name):
    """Fills C-contiguous ``array`` with the bytes at ``offset``."""
    buffer = memoryview(array.reshape(-1).view(np.uint8))
    file.seek(offset)
    done = 0
    while done < len(buffer):
        count = file.readinto(buffer[done:])
        if not count:
            raise Bad(
                f"is truncated: it ends inside the data of tensor {name!r}"
            )
        done += count


def _crc_of_region(file, start, size):
    file.seek(start)
    crc, left = 0, size
    while left:
        chunk = file.read(min(left, _CHUNK))
        if not chunk:
            raise Bad(f"is truncated: it ends inside bytes {start}-{start + size}")
        crc = zlib.crc32(chunk, crc)
        left -= len(chunk)
    return crc


def _verify_crc(found, expected, region):
    if found != expected:
        start, size = region
        raise Bad(
            f"is damaged: the {size} bytes at offset {start} fail their "
            f"CRC-32 check (expected {expected:08x}, found {found:08x})"
        )


def text_kind(head):
    """What a file starting with ``head`` looks like when it is no binary
    format: ``"empty"``, ``"an HTML page"``, ``"a text file, starting ..."``;
    None for binary content."""
    if not head:
        return "empty"
    if b"\0" in head:  # text never holds NUL bytes
        return None
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<":
        return "an HTML page"
    sample = head.decode("utf-8", errors="replace")
    printable = sum(
        c != "\ufffd" and (c.isprintable() or c in "\t\r\n") for c in sample
    )
    if printable >= 0.95 * len(sample):
        first_line = (sample.strip().splitlines() or [""])[0][:60]
        return f"a text file, starting {first_line!r}"
    return None


def describe_foreign(head, wanted):
    """The `Bad` to raise for a file whose first bytes are not ``wanted``."""
    kind = text_kind(head)
    if kind == "empty":
        return Bad("is empty")
    if kind == "an HTML page":
        return Bad(
            f"is not a {wanted} (looks like an HTML page: a failed download "
            "often saves the server's error page; delete the file and "
            "download it again)"
        )
    if kind:
        return Bad(f"is not a {wanted} (looks like {kind})")
    return Bad(f"is not a {wanted} (unrecognised header {head[:8].hex(' ')})")


def _size(n):
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
