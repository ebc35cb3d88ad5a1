"""The torch-free safetensors reader against the reference implementation.

The `safetensors` package writes the reference files and, for every broken
or hostile header, says whether the reference reader accepts it: this
reader refuses all the reference refuses, and a few things it lets through
(duplicate keys, unknown fields), each with a message naming the problem.
"""

import json
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import safetensors.torch
import torch

from keras_senet.safetensors_file import load_state_dict
from keras_senet.tensor_file import CheckpointError


def every_dtype():
    rng = np.random.default_rng(0)
    arrays = {
        name: rng.integers(-100, 100, (3, 4)).astype(name)
        for name in ("int64", "int32", "int16", "int8", "uint8", "uint16",
                     "uint32", "uint64")
    }
    for name in ("float64", "float32", "float16"):  # NaN payloads, inf, -0.0
        raw = rng.integers(0, 256, 12 * np.dtype(name).itemsize, dtype=np.uint8)
        arrays[name] = raw.view(name).reshape(3, 4)
    arrays["complex64"] = (rng.standard_normal(4) + 1j).astype("complex64")
    arrays["bool"] = rng.random((2, 5)) > 0.5
    arrays["scalar"] = np.array(2.5, "float32")
    arrays["empty"] = np.zeros((0, 3), "float32")
    return arrays


def assert_same(loaded, expected):
    assert sorted(loaded) == sorted(expected)
    for name, want in expected.items():
        got = loaded[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.flags.c_contiguous and got.flags.writeable, name
        assert got.tobytes() == want.tobytes(), name


def test_numpy_written_files_read_as_the_reference_reads_them(tmp_path):
    path = tmp_path / "all.safetensors"
    safetensors.numpy.save_file(every_dtype(), path, metadata={"format": "np"})
    loaded = load_state_dict(path)
    assert_same(loaded, safetensors.numpy.load_file(path))
    assert_same(loaded, every_dtype())
    # In the order of their data in the file, as the writer laid them out.
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    header.pop("__metadata__")
    assert list(loaded) == sorted(header, key=lambda k: header[k]["data_offsets"])


def test_torch_written_files_bfloat16_to_float32(tmp_path):
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (3, 10), generator=gen, dtype=torch.uint8)
    tensors = {
        "bf16": raw.view(torch.bfloat16),  # every bit pattern kind
        "f16": torch.randn(4, 2, generator=gen).half(),
        "long": torch.arange(-3, 3),
        "weight": torch.randn(8, 3, 3, 3, generator=gen),
    }
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(tensors, path)
    loaded = load_state_dict(path)
    expected = {k: (t.float() if t.dtype == torch.bfloat16 else t).numpy()
                for k, t in tensors.items()}
    assert_same(loaded, expected)
    assert loaded["bf16"].dtype == np.float32


def _file(header=None, data=b"", raw=None):
    text = json.dumps(header).encode() if raw is None else raw
    return struct.pack("<Q", len(text)) + text + data


F4 = np.arange(4, dtype="<f4").tobytes()


def _tensor(dtype="F32", shape=(2, 2), offsets=(0, 16), **extra):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets),
            **extra}


# name: (file bytes, message pattern, whether the reference accepts it)
HOSTILE = {
    "trailing-bytes": (_file({"a": _tensor()}, F4 + b"x"),
                       "1 trailing bytes after its last tensor", False),
    "no-tensors-but-data": (_file({}, b"abc"), "3 trailing bytes", False),
    "offsets-past-end": (_file({"a": _tensor()}, F4[:-1]),
                         r"tensor 'a' has data_offsets \[0, 16\], past the end "
                         "of the 15 bytes", False),
    "gap": (_file({"a": _tensor(offsets=(4, 20))}, bytes(4) + F4),
            "bytes 0-4 of its data unused before tensor 'a'", False),
    "overlap": (_file({"a": _tensor(), "b": _tensor(shape=[2], offsets=(8, 16))}, F4),
                "overlapping tensors: 'b' .* starts inside 'a'", False),
    "begin-after-end": (_file({"a": _tensor(shape=[0], offsets=(16, 0))}, F4),
                        "begin after end", False),
    "size-not-shape": (_file({"a": _tensor(shape=(3, 2))}, F4),
                       r"\(16 bytes\), but its shape \[3, 2\] of float32 needs 24",
                       False),
    "shape-overflow": (_file({"a": _tensor(shape=(2**62, 2**62))}, F4),
                       f"needs {2**62 * 2**62 * 4} bytes", False),
    "unknown-dtype": (_file({"a": _tensor(dtype="F128")}, F4),
                      r"dtype 'F128' \(unknown dtype", False),
    "fp8-dtype": (_file({"a": _tensor(dtype="F8_E4M3", shape=[16])}, F4),
                  r"dtype 'F8_E4M3' \(NumPy has no such type", None),
    "negative-shape": (_file({"a": _tensor(shape=(-2, -2))}, F4),
                       "shape .* non-negative integers", False),
    "float-shape": (_file(raw=b'{"a":{"dtype":"F32","shape":[4e0],'
                          b'"data_offsets":[0,16]}}', data=F4),
                    "shape .* non-negative integers", False),
    "bool-offset": (_file({"a": _tensor(offsets=(False, 16))}, F4),
                    "data_offsets .* two non-negative integers", False),
    "three-offsets": (_file({"a": _tensor(offsets=(0, 16, 3))}, F4),
                      "data_offsets .* two non-negative integers", False),
    "missing-field": (_file({"a": {"dtype": "F32", "shape": [4]}}, F4),
                      r"missing or unexpected fields \['data_offsets'\]", False),
    "tensor-not-object": (_file({"a": "x"}, F4), "'x' is not an object", False),
    "metadata-not-strings": (_file({"__metadata__": {"v": 1}, "a": _tensor()}, F4),
                             "invalid '__metadata__'", False),
    "header-a-list": (_file(raw=b"[1, 2]      ", data=F4),
                      "a JSON list, not an object", False),
    "invalid-json": (_file(raw=b'{"a": ', data=F4), "not valid JSON", False),
    "nan-in-json": (_file(raw=b'{"a": NaN}', data=F4), "not valid JSON", False),
    "trailing-nul": (_file(raw=json.dumps({"a": _tensor()}).encode() + b"\0",
                           data=F4), "not valid JSON", False),
    "invalid-utf8": (_file(raw=b'{"\xff": 1}', data=F4), "not UTF-8", False),
    "header-longer-than-file": (struct.pack("<Q", 100) + b"{}",
                                "header is 100 bytes long but only 2", False),
    "huge-header-length": (struct.pack("<Q", 1 << 40) + b"{}",
                           "header of 1099511627776 bytes, more than the cap",
                           False),
    "shorter-than-8": (b"\x02\x00\x00", "is truncated: 3 bytes", False),
    # Accepted by the reference, refused here.
    "duplicate-key": (_file(raw=b'{"a":{"dtype":"F32","shape":[4],'
                          b'"data_offsets":[0,16]},"a":{"dtype":"F32",'
                          b'"shape":[4],"data_offsets":[0,16]}}', data=F4),
                      r"duplicate keys \['a'\]", True),
    "unknown-field": (_file({"a": _tensor(x=1)}, F4),
                      r"unexpected fields \['x'\]", True),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_broken_and_hostile_headers_are_refused(tmp_path, case):
    content, expected, reference_accepts = HOSTILE[case]
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected) as info:
        load_state_dict(path)
    assert str(path) in str(info.value)
    if reference_accepts is None:  # the reference cannot hold it in NumPy
        return
    try:
        safetensors.numpy.load_file(path)
        accepted = True
    except safetensors.SafetensorError:
        accepted = False
    assert accepted == reference_accepts


def test_what_the_reference_accepts_is_read(tmp_path):
    cases = {
        # Writers pad the header with spaces; JSON allows leading ones.
        "padded": _file(raw=b'  {"a":{"dtype":"F32","shape":[2,2],'
                        b'"data_offsets":[0,16]}}      ', data=F4),
        # Empty tensors may sit at any boundary.
        "empties": _file({"z": _tensor(shape=[0], offsets=(16, 16)),
                          "e": _tensor(shape=[0, 5], offsets=(0, 0)),
                          "a": _tensor()}, F4),
        "nothing": _file({}, b""),
        "null-metadata": _file({"__metadata__": None, "a": _tensor()}, F4),
    }
    for case, content in cases.items():
        path = tmp_path / f"{case}.safetensors"
        path.write_bytes(content)
        assert_same(load_state_dict(path), safetensors.numpy.load_file(path))


def test_budget_counts_staging_of_converted_dtypes(tmp_path):
    tensors = {
        "f": torch.ones(3, 4),  # read straight into its array: 48
        "h": torch.ones(5, dtype=torch.bfloat16),  # float32 20 + raw 10
        "b": torch.ones(6, dtype=torch.bool),  # bool 6 + raw 6
    }
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file(tensors, path)
    assert len(load_state_dict(path, max_bytes=90)) == 3
    with pytest.raises(CheckpointError, match=r"\(90 bytes\).*max_bytes=89"):
        load_state_dict(path, max_bytes=89)


def test_foreign_and_missing_files(tmp_path):
    for content, expected in [
        (b"", "is empty"),
        (b"<!DOCTYPE html><html>Not found</html>", "HTML page"),
        (b"version https://git-lfs.github.com/spec/v1\n", "text file"),
    ]:
        path = tmp_path / "w.safetensors"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=expected):
            load_state_dict(path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state_dict(tmp_path / "missing.safetensors")
