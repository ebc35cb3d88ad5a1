"""Reads safetensors files (the Hugging Face hub's ``model.safetensors``).

NumPy and the standard library only: the ``safetensors`` package is not
needed. The format:

- 8 bytes: ``N``, the header's length, an unsigned little-endian integer;
- ``N`` bytes: a UTF-8 JSON object ``{name: {"dtype": "F32", "shape": [..],
  "data_offsets": [begin, end]}}``, optionally with ``"__metadata__":
  {str: str}`` (writers pad it with trailing spaces);
- the data: each tensor's bytes, C order, little-endian, at ``[begin,
  end)`` counted from the end of the header.

The reader is strict. Like the reference implementation (the Rust crate
behind the ``safetensors`` package) it requires the tensors, in offset
order, to cover the data exactly: the first begins at 0, each begins where
the one before ended, the last ends at the end of the file, and each holds
``prod(shape) * itemsize`` bytes; so gaps, overlaps and trailing bytes are
refused. It also refuses what the reference lets through but no writer
produces, and what another reader might read differently: duplicate keys
(the reference keeps the last), fields other than the three above, a
header that is not a JSON object. The header may be at most
`tensor_file.MAX_METADATA_BYTES` long (the reference allows 100 MB; real
headers are about 100 bytes per tensor).

BF16 tensors come back as float32 (exact), BOOL as bool (nonzero bytes are
True); the FP8/FP6/FP4 types, which NumPy lacks, are refused.
"""

import json

from keras_senet import tensor_file
from keras_senet.tensor_file import Bad
from keras_senet.tensor_file import CheckpointError  # noqa: F401 (re-export)
from keras_senet.tensor_file import TensorLocation
from keras_senet.tensor_file import itemsize

# safetensors dtype -> canonical dtype (`tensor_file.DTYPES`).
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "C64": "complex64",
}
# Dtypes of the format that NumPy cannot hold.
_UNSUPPORTED = ("F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4")
_FIELDS = ("dtype", "shape", "data_offsets")
_WHITESPACE = b" \t\r\n"


def parser_for(head):
    """`parse` if ``head`` (a file's first bytes) looks like safetensors."""
    if len(head) > 8 and head[8:].lstrip(_WHITESPACE)[:1] == b"{":
        return parse
    return None


def parse(file, size):
    """``(locations, {})``: the tensors in offset order (`tensor_file.load`)."""
    if size < 8:
        raise Bad(
            f"is truncated: {size} bytes, less than the 8-byte header length "
            "of a safetensors file"
        )
    length = int.from_bytes(file.read(8), "little")
    cap = tensor_file.MAX_METADATA_BYTES
    if length > cap:
        raise Bad(
            f"declares a safetensors header of {length} bytes, more than the "
            f"cap of {cap} (real headers need about 100 bytes per tensor)"
        )
    if 8 + length > size:
        raise Bad(
            f"is truncated: its safetensors header is {length} bytes long but "
            f"only {size - 8} bytes follow the header length"
        )
    header = _decode(file.read(length))
    data_start = 8 + length
    entries = _entries(header)
    return _tile(entries, data_start, size - data_start), {}


def _decode(raw):
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Bad(f"has a safetensors header that is not UTF-8 ({error})")

    def unique_keys(pairs):
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            repeated = sorted({k for k in keys if keys.count(k) > 1})
            raise Bad(
                f"has a safetensors header with duplicate keys {repeated[:5]!r}"
            )
        return dict(pairs)

    def constant(name):
        raise ValueError(f"{name} is not JSON")

    try:
        header = json.loads(
            text, object_pairs_hook=unique_keys, parse_constant=constant
        )
    except (ValueError, RecursionError) as error:
        raise Bad(f"has a safetensors header that is not valid JSON ({error})")
    if not isinstance(header, dict):
        raise Bad(
            "has a safetensors header that is a JSON "
            f"{type(header).__name__}, not an object"
        )
    return header


def _entries(header):
    """``[(begin, end, name, dtype, shape)]`` after checking each field."""
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict)
        and all(isinstance(v, str) for v in metadata.values())
    ):
        raise Bad(
            "has an invalid '__metadata__' in its safetensors header "
            f"(expected an object of strings, got {metadata!r:.80})"
        )
    entries = []
    for name, info in header.items():
        where = f"tensor {name!r} in its safetensors header"
        if not isinstance(info, dict):
            raise Bad(f"has an invalid {where}: {info!r:.80} is not an object")
        fields = sorted(set(info) ^ set(_FIELDS))
        if fields:
            raise Bad(
                f"has an invalid {where}: missing or unexpected fields "
                f"{fields} (expected exactly {list(_FIELDS)})"
            )
        dtype, shape, offsets = (info[field] for field in _FIELDS)
        if dtype not in DTYPES:
            if dtype in _UNSUPPORTED:
                problem = "NumPy has no such type"
            else:
                problem = "unknown dtype"
            raise Bad(
                f"has {where} of dtype {dtype!r:.40} ({problem}; supported: "
                f"{', '.join(DTYPES)})"
            )
        if not _naturals(shape):
            raise Bad(
                f"has {where} with shape {shape!r:.80} (expected a list of "
                "non-negative integers)"
            )
        if not _naturals(offsets) or len(offsets) != 2:
            raise Bad(
                f"has {where} with data_offsets {offsets!r:.80} (expected "
                "[begin, end], two non-negative integers)"
            )
        entries.append((*offsets, name, DTYPES[dtype], tuple(shape)))
    return entries


def _naturals(value):
    return isinstance(value, list) and all(
        type(item) is int and item >= 0 for item in value
    )


def _tile(entries, data_start, data_size):
    """``{name: TensorLocation}`` once the tensors tile the data exactly."""
    locations = {}
    position, previous = 0, None
    for begin, end, name, dtype, shape in sorted(entries, key=lambda e: e[:2]):
        span = f"data_offsets [{begin}, {end}]"
        if end > data_size:
            raise Bad(
                f"is truncated or its header lies: tensor {name!r} has {span}, "
                f"past the end of the {data_size} bytes of data"
            )
        if begin > end:
            raise Bad(f"has tensor {name!r} with {span}: begin after end")
        location = TensorLocation(dtype, shape, _c_strides(shape), data_start + begin)
        needed = location.numel * itemsize(dtype)
        if end - begin != needed:
            raise Bad(
                f"has tensor {name!r} with {span} ({end - begin} bytes), but "
                f"its shape {list(shape)} of {dtype} needs {needed} bytes"
            )
        if begin < position:
            raise Bad(
                f"has overlapping tensors: {name!r} ({span}) starts inside "
                f"{previous!r}, which ends at {position}"
            )
        if begin > position:
            raise Bad(
                f"leaves bytes {position}-{begin} of its data unused before "
                f"tensor {name!r} (a gap: the tensors must cover the data "
                "exactly)"
            )
        locations[name] = location
        position, previous = end, name
    if position != data_size:
        raise Bad(
            f"has {data_size - position} trailing bytes after its last tensor "
            "(the tensors must cover the data exactly)"
        )
    return locations


def _c_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return tuple(reversed(strides))


def load_state_dict(path, *, max_bytes=None, check=None):
    """Reads a safetensors file into ``{name: numpy.ndarray}``.

    The arguments, return value and errors are those of
    `keras_senet.state_dict.load_state_dict`, for safetensors files only;
    the tensors come in the order of their data in the file.
    """
    path, max_bytes = tensor_file.check_arguments(path, max_bytes, check)

    def sniff(head):  # binary content gets parse's specific messages
        if parser_for(head) or tensor_file.text_kind(head) is None:
            return parse
        raise tensor_file.describe_foreign(head, "safetensors file")

    return tensor_file.load(path, sniff, max_bytes=max_bytes, check=check)
