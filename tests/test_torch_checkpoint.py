"""The torch-free checkpoint reader against files that torch itself writes.

torch writes the files (both formats); `torch.Tensor.numpy()` is the
reference for every value. Files of the 2017 layout (`_rebuild_tensor`,
storage views) and hostile ones are written with `pickle` directly.
"""

import collections
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
import pytest
import timm
import torch
from isolated_reader import run_reader

from keras_senet import tensor_file
from keras_senet.torch_checkpoint import LEGACY_MAGIC_NUMBER
from keras_senet.torch_checkpoint import CheckpointError
from keras_senet.torch_checkpoint import load_state_dict

FORMATS = ["zip", "legacy"]


def save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def reference(tensor):
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()  # exact
    return tensor.contiguous().numpy()


def assert_bitwise_equal(loaded, state_dict):
    assert list(loaded) == list(state_dict)
    for name, tensor in state_dict.items():
        expected = reference(tensor)
        array = loaded[name]
        assert isinstance(array, np.ndarray), name
        assert array.dtype == expected.dtype, name
        assert array.shape == expected.shape, name
        assert array.flags.c_contiguous and array.flags.writeable, name
        assert array.tobytes() == expected.tobytes(), name


def every_dtype_state_dict():
    gen = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    # Random bit patterns: NaN payloads, infinities, subnormals, -0.0.
    for dtype in [torch.float32, torch.float64, torch.float16, torch.bfloat16]:
        nbytes = torch.finfo(dtype).bits // 8
        raw = torch.randint(0, 256, (3, 5 * nbytes), generator=gen)
        sd[str(dtype)] = raw.to(torch.uint8).view(dtype)
    for dtype in [torch.int64, torch.int32, torch.int16, torch.int8]:
        info = torch.iinfo(dtype)
        sd[str(dtype)] = torch.randint(
            info.min, info.max, (4, 3), generator=gen, dtype=dtype
        )
    sd["uint8"] = torch.randint(0, 256, (7,), generator=gen, dtype=torch.uint8)
    # Newer dtypes travel through _rebuild_tensor_v3 with a dtype global.
    sd["uint16"] = torch.tensor([0, 1, 2**16 - 1]).to(torch.uint16)
    sd["uint32"] = torch.tensor([0, 2**32 - 1]).to(torch.uint32)
    sd["complex64"] = torch.randn(2, 2, dtype=torch.complex64, generator=gen)
    sd["bool"] = torch.rand(2, 3, generator=gen) > 0.5
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    sd["base"] = base
    sd["rows_cols_view"] = base[1:, ::2]  # offset and strides, shared storage
    sd["transposed"] = base.t()
    sd["row"] = base[3]
    sd["expanded"] = torch.tensor([[1.5], [2.5]]).expand(2, 4)
    sd["scalar"] = torch.tensor(-2.25, dtype=torch.float64)
    sd["int_scalar"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    sd["empty_int"] = torch.zeros(0, dtype=torch.int64)
    sd["param"] = torch.nn.Parameter(torch.randn(3, 2, generator=gen))
    return sd


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_dtype_and_layout(tmp_path, fmt):
    sd = every_dtype_state_dict()
    loaded = load_state_dict(save(sd, tmp_path / "sd.pth", fmt))
    assert_bitwise_equal(loaded, sd)
    assert loaded["torch.bfloat16"].dtype == np.float32
    # Views were copied out: writing to one leaves its storage-mates alone.
    loaded["rows_cols_view"][...] = -1
    np.testing.assert_array_equal(loaded["base"], sd["base"].numpy())


@pytest.mark.parametrize("fmt", FORMATS)
def test_parameters_and_str_path(tmp_path, fmt):
    sd = {"w": torch.nn.Parameter(torch.randn(3, 4)), "b": torch.randn(4)}
    path = save(sd, tmp_path / "p.pt", fmt)
    assert_bitwise_equal(load_state_dict(str(path)), sd)


def test_real_model_state_dict_both_formats(tmp_path):
    model = timm.create_model("legacy_seresnet18", pretrained=False)
    sd = model.state_dict()
    assert hasattr(sd, "_metadata")  # exercised: BUILD with _metadata
    for fmt in FORMATS:
        loaded = load_state_dict(save(sd, tmp_path / f"{fmt}.pth", fmt))
        assert list(loaded) == list(sd)
        for name, tensor in sd.items():
            np.testing.assert_array_equal(loaded[name], tensor.numpy(), name)
            assert loaded[name].dtype == tensor.numpy().dtype


@pytest.mark.parametrize("fmt", FORMATS)
def test_training_checkpoint_wrappers(tmp_path, fmt):
    sd = {
        "conv.weight": torch.randn(2, 3),
        "bn.num_batches_tracked": torch.tensor(5),
    }
    for wrapper in ("state_dict", "model"):
        checkpoint = {"epoch": 3, wrapper: sd, "optimizer": {"lr": 0.1}}
        path = save(checkpoint, tmp_path / f"{wrapper}.pth", fmt)
        assert_bitwise_equal(load_state_dict(path), sd)


@pytest.mark.parametrize("fmt", FORMATS)
def test_not_a_state_dict(tmp_path, fmt):
    path = save({"w": torch.ones(2), "step": 10}, tmp_path / "x.pth", fmt)
    with pytest.raises(CheckpointError, match=r"x\.pth.*'step' is of type int"):
        load_state_dict(path)
    path = save([torch.ones(2)], tmp_path / "list.pth", fmt)
    with pytest.raises(CheckpointError, match=r"list\.pth.*type list"):
        load_state_dict(path)


def test_reads_without_torch(tmp_path):
    """The reader alone, in a process where `import torch` fails."""
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    paths = [save(sd, tmp_path / f"{fmt}.pth", fmt) for fmt in FORMATS]
    result = run_reader(
        """
        from keras_senet import torch_checkpoint
        for path in sys.argv[1:]:
            for name, array in torch_checkpoint.load_state_dict(path).items():
                print(name, array.dtype, array.tobytes().hex())
        assert "keras" not in sys.modules and sys.modules["torch"] is None
        """,
        *paths,
    )
    assert result.returncode == 0, result.stderr
    expected = [
        f"{name} {t.numpy().dtype} {t.numpy().tobytes().hex()}"
        for name, t in sd.items()
    ]
    assert result.stdout.splitlines() == expected * 2


# --- Files in the 2017 layout, written here with pickle alone. -------------


class _Storage:
    """Pickled as a legacy persistent id."""

    def __init__(self, key, storage_type, numel, view=None):
        self.key, self.type = key, storage_type
        self.numel, self.view = numel, view


class _OldTensor:
    """Pickled as torch 0.2-0.3 did: _rebuild_tensor(storage, offset, size,
    stride)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        return torch._utils._rebuild_tensor, self.args


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.type, obj.key, "cpu", obj.numel, obj.view)
        return None


def write_legacy(path, obj, storages, little_endian=True):
    """The legacy stream: magic, version, sys info, obj, keys, storages."""
    with open(path, "wb") as f:
        for header in (
            LEGACY_MAGIC_NUMBER,
            1001,
            {"protocol_version": 1001, "little_endian": little_endian},
        ):
            pickle.dump(header, f, protocol=2)
        _LegacyPickler(f, protocol=2).dump(obj)
        pickle.dump(list(storages), f, protocol=2)
        for data in storages.values():
            f.write(np.int64(data.size).astype("<i8").tobytes())
            f.write(data.tobytes())
    return path


def test_2017_layout_rebuild_tensor_and_storage_views(tmp_path):
    data = np.arange(20, dtype="<f4")
    whole = _Storage("0", torch.FloatStorage, 20)
    view = _Storage("0", torch.FloatStorage, 20, view=("v1", 8, 12))
    longs = np.array([3, -4], dtype="<i8")
    long_storage = _Storage("1", torch.LongStorage, 2)
    obj = collections.OrderedDict(
        [
            ("a", _OldTensor(whole, 2, (2, 3), (6, 2))),
            ("b", _OldTensor(view, 1, (3,), (4,))),
            ("c", _OldTensor(long_storage, 0, (2,), (1,))),
        ]
    )
    path = write_legacy(tmp_path / "old.pth", obj, {"0": data, "1": longs})
    loaded = load_state_dict(path)
    np.testing.assert_array_equal(loaded["a"], data[2:].reshape(3, 6)[:2, :6:2])
    np.testing.assert_array_equal(loaded["b"], data[8:][1::4][:3])
    np.testing.assert_array_equal(loaded["c"], longs)
    assert loaded["c"].dtype == np.int64


def test_tensor_outside_its_storage_is_refused(tmp_path):
    storage = _Storage("0", torch.FloatStorage, 8)
    for offset, size, stride, problem in [
        (0, (3, 3), (3, 1), "past the end"),
        (8, (1,), (1,), "past the end"),
        (0, (2,), (8,), "past the end"),
        (-1, (1,), (1,), "invalid layout"),
        (0, (2, 2), (1,), "invalid layout"),
    ]:
        obj = {"w": _OldTensor(storage, offset, size, stride)}
        zeros = {"0": np.zeros(8, "<f4")}
        path = write_legacy(tmp_path / "oob.pth", obj, zeros)
        with pytest.raises(CheckpointError, match=rf"oob\.pth.*{problem}"):
            load_state_dict(path)
    # The largest layouts that fit are read.
    obj = {
        "a": _OldTensor(storage, 7, (1,), (1,)),
        "b": _OldTensor(storage, 0, (2,), (7,)),
    }
    data = {"0": np.arange(8, dtype="<f4")}
    loaded = load_state_dict(write_legacy(tmp_path / "fit.pth", obj, data))
    np.testing.assert_array_equal(loaded["a"], [7.0])
    np.testing.assert_array_equal(loaded["b"], [0.0, 7.0])


# --- Hostile and broken files. ---------------------------------------------


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _zip_with_pickle(path, payload):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("container", ["zip", "legacy", "plain-zip"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    sentinel = tmp_path / "sentinel"
    evil = {"w": torch.ones(2), "x": _Evil(f"touch {sentinel}")}
    path = tmp_path / "evil.pth"
    if container == "plain-zip":
        _zip_with_pickle(path, pickle.dumps(evil["x"], protocol=2))
    else:
        save(evil, path, container)
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    assert f"'{os.system.__module__}.system'" in message
    assert not sentinel.exists()


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_module_and_foreign_attributes_are_refused(tmp_path, fmt):
    path = save(torch.nn.Linear(2, 2), tmp_path / "module.pth", fmt)
    with pytest.raises(CheckpointError, match=r"nn\.modules\.linear\.Linear"):
        load_state_dict(path)
    sd = collections.OrderedDict(w=torch.ones(1))
    sd.hook = "x"  # pickled as BUILD {'hook': 'x'} on the OrderedDict
    path = save(sd, tmp_path / "attr.pth", fmt)
    with pytest.raises(CheckpointError, match=r"attr.*\['hook'\].*'_metadata'"):
        load_state_dict(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_truncated_files(tmp_path, fmt):
    sd = {"a": torch.randn(64, 32), "b": torch.arange(100)}
    full = save(sd, tmp_path / "full.pth", fmt).read_bytes()
    size = len(full)
    for cut in (1, 9, 30, size // 3, size // 2, size - 80, size - 1):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(full[:cut])
        with pytest.raises(CheckpointError, match="truncated") as info:
            load_state_dict(path)
        assert str(path) in str(info.value), cut


def test_truncated_storage_message(tmp_path):
    sd = {"a": torch.zeros(10, dtype=torch.float64)}
    full = save(sd, tmp_path / "full.pth", "legacy").read_bytes()
    path = tmp_path / "short.pth"
    path.write_bytes(full[:-30])
    expected = (
        r"short\.pth' is truncated: expected 80 bytes of storage '\w+', "
        "found 50"
    )
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(path)


def _rewrite_zip(src, dst, change):
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info))
            if data is not None:
                new.writestr(info.filename, data)
    return dst


def test_zip_member_sizes_and_byte_order_are_checked(tmp_path):
    src = save({"a": torch.ones(6)}, tmp_path / "z.pth", "zip")
    short = _rewrite_zip(
        src, tmp_path / "short.pth",
        lambda name, data: data[:-4] if name.endswith("/data/0") else data,
    )
    expected = r"short\.pth.*expected 24 bytes of storage '0', found 20"
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(short)
    missing = _rewrite_zip(
        src, tmp_path / "missing.pth",
        lambda name, data: None if name.endswith("/data/0") else data,
    )
    expected = r"missing\.pth.*lacks the data of storage '0'"
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(missing)
    big = _rewrite_zip(
        src, tmp_path / "big.pth",
        lambda name, data: b"big" if name.endswith("/byteorder") else data,
    )
    expected = r"big\.pth.*'big' byte order.*little-endian"
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(big)


def test_big_endian_legacy_file_is_named(tmp_path):
    obj = {"a": _OldTensor(_Storage("0", torch.FloatStorage, 2), 0, (2,), (1,))}
    storages = {"0": np.ones(2, "<f4")}
    assert load_state_dict(write_legacy(tmp_path / "le.pth", obj, storages))
    path = write_legacy(tmp_path / "be.pth", obj, storages, little_endian=False)
    with pytest.raises(CheckpointError, match=r"be\.pth.*big-endian"):
        load_state_dict(path)


def test_foreign_files_get_specific_messages(tmp_path):
    for content, expected in [
        (b"", "is empty"),
        (b"<!DOCTYPE html>\n<html><body>404 Not Found</body>", "HTML page"),
        (b"\n  <html><head><title>Error</title>", "HTML page"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:", "text"),
        (pickle.dumps({"w": [1.0]}, protocol=2), "no PyTorch magic number"),
        (b"PK\x05\x06" + bytes(18), "zip archive but not a PyTorch checkpoint"),
        (bytes(range(256)), "unrecognised header"),
    ]:
        path = tmp_path / "weights.pth"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match=expected) as info:
            load_state_dict(path)
        assert str(path) in str(info.value)


def test_random_bytes_raise_checkpoint_error_only(tmp_path):
    rng = np.random.default_rng(0)
    magic = pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2)
    for prefix in (b"", b"\x80\x02", b"PK\x03\x04", magic):
        for i in range(25):
            path = tmp_path / f"random{i}.bin"
            path.write_bytes(prefix + rng.bytes(int(rng.integers(1, 400))))
            with pytest.raises(CheckpointError) as info:
                load_state_dict(path)
            assert str(path) in str(info.value)


def test_missing_file_and_bad_argument(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pth.*cannot be read"):
        load_state_dict(tmp_path / "nope.pth")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_state_dict(tmp_path)  # a directory
    with pytest.raises(ValueError, match="Received: path=42"):
        load_state_dict(42)
    assert issubclass(CheckpointError, ValueError)


# --- Memory bombs, and what PyTorch never writes. ---------------------------
#
# Nothing a file claims is allocated before the total is checked against
# `max_bytes`; the zip container is held to what torch.save writes.


def _expanded_bomb(path, count=3):
    """A few hundred bytes: ``count`` stride-0 float32 tensors of 1 GiB each
    over one 1-element storage."""
    storage = _Storage("0", torch.FloatStorage, 1)
    obj = {f"t{i}": _OldTensor(storage, 0, (1 << 28,), (0,)) for i in range(count)}
    return write_legacy(path, obj, {"0": np.ones(1, "<f4")})


def _binbytes_bomb(path):
    """A legacy file whose pickle claims a 1 TiB bytes object in 9 bytes."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xyz")
    return path


# EMPTY_LIST, LONG_BINPUT 10**8, STOP: the unpickler zero-fills a memo
# table of 10**8 entries (1.5 GB) for these 9 bytes.
_MEMO_BOMB = b"\x80\x02]r" + struct.pack("<I", 10**8) + b"."


def _memo_bomb(path):
    """A legacy file whose object pickle is `_MEMO_BOMB`."""
    with open(path, "wb") as f:
        for header in (LEGACY_MAGIC_NUMBER, 1001, {"little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(_MEMO_BOMB)
    return path


def write_zip(path, members, comment=b""):
    """A zip archive written byte by byte, without data descriptors.

    ``members``: dicts with ``name`` and ``data`` (as stored), optional
    ``method`` (0 stored, 8 deflated), ``size`` (uncompressed), ``crc``,
    ``local_name`` (the local header's name, if it differs) and ``gap``
    (bytes of padding after the member).
    """
    out, central = bytearray(), bytearray()
    for m in members:
        name, data = m["name"].encode(), m["data"]
        method = m.get("method", 0)
        size = m.get("size", len(data))
        crc = m.get("crc", zlib.crc32(data))
        local = m.get("local_name", m["name"]).encode()
        offset = len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0,
                           crc, len(data), size, len(local), 0)
        out += local + data + bytes(m.get("gap", 0))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0,
                               method, 0, 0, crc, len(data), size, len(name),
                               0, 0, 0, 0, 0, offset) + name
    n = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central),
                      len(out), len(comment))
    path.write_bytes(bytes(out + central + end + comment))
    return path


def _members(path):
    """The members of a zip checkpoint as `write_zip` dicts."""
    with zipfile.ZipFile(path) as archive:
        return [{"name": i.filename, "data": archive.read(i)}
                for i in archive.infolist()]


def _zip_pickle(obj):
    buffer = io.BytesIO()
    _LegacyPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _deflate_bomb(path, gib=2):
    """About 2 MB: a deflated storage member that inflates to ``gib`` GiB
    of zeros (one sync-flushed 1 MiB segment, repeated)."""
    numel = (gib << 30) // 4
    obj = {"w": _OldTensor(_Storage("0", torch.FloatStorage, numel), 0,
                           (numel,), (1,))}
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = compressor.compress(bytes(1 << 20))
    segment += compressor.flush(zlib.Z_SYNC_FLUSH)
    stream = segment * (gib << 10) + b"\x03\x00"  # + an empty final block
    return write_zip(path, [
        {"name": "bomb/data.pkl", "data": _zip_pickle(obj)},
        {"name": "bomb/data/0", "data": stream, "method": 8,
         "size": gib << 30, "crc": 0},
    ])


def test_expanded_tensors_are_refused_by_the_total_budget(tmp_path):
    # Each tensor is within any per-tensor cap; together they claim 3 GiB.
    path = _expanded_bomb(tmp_path / "expanded.pth")
    assert path.stat().st_size < 500
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    assert "3.00 GiB" in message and "max_bytes=2147483648" in message
    with pytest.raises(CheckpointError, match="more than the limit of 1.0 KiB"):
        load_state_dict(_expanded_bomb(tmp_path / "small.pth", count=1),
                        max_bytes=1024)


@pytest.mark.parametrize("fmt", FORMATS)
def test_budget_counts_arrays_and_staging_buffers(tmp_path, fmt):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {
        "w": torch.ones(3, 4),  # read straight into its array: 48
        "v": base[1:3, ::2],  # strided: array 24 + storage span 44
        "h": torch.ones(5, dtype=torch.bfloat16),  # float32 20 + raw 10
        "b": torch.ones(6, dtype=torch.bool),  # bool 6 + raw 6
    }
    path = save(sd, tmp_path / "sd.pth", fmt)
    assert_bitwise_equal(load_state_dict(path, max_bytes=158), sd)
    with pytest.raises(CheckpointError, match=r"\(158 bytes\).*max_bytes=157"):
        load_state_dict(path, max_bytes=157)


@pytest.fixture(scope="module")
def deflate_bomb(tmp_path_factory):
    return _deflate_bomb(tmp_path_factory.mktemp("bomb") / "deflated.pth")


def test_compressed_zip_members_are_refused(tmp_path, deflate_bomb):
    assert deflate_bomb.stat().st_size < 4 << 20
    with pytest.raises(CheckpointError) as info:
        load_state_dict(deflate_bomb)
    assert str(deflate_bomb) in str(info.value)
    assert "compressed zip member 'bomb/data/0' (method 8)" in str(info.value)
    # A data.pkl deflated by a re-zipping tool: refused before unpickling.
    src = save({"a": torch.ones(3)}, tmp_path / "t.pth", "zip")
    path = tmp_path / "deflated_pickle.pth"
    with zipfile.ZipFile(path, "w") as archive:
        for member in _members(src):
            method = zipfile.ZIP_DEFLATED if member["name"].endswith(".pkl") else 0
            archive.writestr(member["name"], member["data"], compress_type=method)
    with pytest.raises(CheckpointError, match=r"compressed zip member 't/data\.pkl'"):
        load_state_dict(path)


def test_pickles_are_bounded(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match=r"a pickle larger than \d+ bytes"):
        load_state_dict(_binbytes_bomb(tmp_path / "binbytes.pth"))
    memo = _memo_bomb(tmp_path / "memo.pth")
    assert memo.stat().st_size < 100
    with pytest.raises(CheckpointError, match="memo index 100000000 where a pickler"):
        load_state_dict(memo)
    # The same 9 bytes as the data.pkl of a zip checkpoint.
    members = _members(save({"a": torch.ones(2)}, tmp_path / "t.pth", "zip"))
    crafted = [dict(m, data=_MEMO_BOMB) if m["name"].endswith(".pkl") else m
               for m in members]
    with pytest.raises(CheckpointError, match="memo index 100000000"):
        load_state_dict(write_zip(tmp_path / "memo_zip.pth", crafted))
    sd = {"w" * 5000: torch.ones(1)}  # a 5 kB pickle
    zipped = save(sd, tmp_path / "z.pth", "zip")
    legacy = save(sd, tmp_path / "l.pth", "legacy")
    assert load_state_dict(zipped) and load_state_dict(legacy)
    monkeypatch.setattr(tensor_file, "MAX_METADATA_BYTES", 2000)
    with pytest.raises(CheckpointError, match=r"data\.pkl of \d+ bytes, more than 2000"):
        load_state_dict(zipped)
    with pytest.raises(CheckpointError, match="a pickle larger than 2000 bytes"):
        load_state_dict(legacy)


@pytest.mark.parametrize("fmt", FORMATS)
def test_trailing_bytes_are_refused(tmp_path, fmt):
    path = save({"a": torch.ones(4)}, tmp_path / "t.pth", fmt)
    path.write_bytes(path.read_bytes() + b"\0hidden")
    expected = {
        "legacy": "has 7 trailing bytes after its last storage",
        "zip": "has 7 bytes after its zip directory",
    }[fmt]
    with pytest.raises(CheckpointError, match=expected):
        load_state_dict(path)


def test_zip_members_pytorch_never_writes_are_refused(tmp_path):
    sd = {"a": torch.arange(4.0), "b": torch.arange(3)}
    members = _members(save(sd, tmp_path / "t.pth", "zip"))
    # The same members rewritten without PyTorch's padding and data
    # descriptors (as a re-zipping tool would) are still a good checkpoint.
    assert_bitwise_equal(load_state_dict(write_zip(tmp_path / "ok.pth", members)), sd)
    first_storage = next(i for i, m in enumerate(members) if "/data/" in m["name"])
    cases = {
        "unreferenced": (
            members + [{"name": "t/data/9", "data": bytes(8)}],
            r"storages no tensor uses \(\['t/data/9'\]\)",
        ),
        "unknown": (
            members + [{"name": "t/payload.py", "data": b"print(1)"}],
            "member 't/payload.py', which PyTorch does not write",
        ),
        "duplicate": (
            members + [dict(members[first_storage], data=bytes(16))],
            r"zip members more than once: \['t/data/0'\]",
        ),
        "gap": (
            [dict(m, gap=16 * (i == 0)) for i, m in enumerate(members)],
            "a gap between zip members",
        ),
        "renamed-locally": (
            [dict(m, local_name="t/data/x" if i == first_storage else m["name"])
             for i, m in enumerate(members)],
            "local header of zip member 't/data/0' does not match",
        ),
    }
    for case, (crafted, expected) in cases.items():
        path = write_zip(tmp_path / f"{case}.pth", crafted)
        with pytest.raises(CheckpointError, match=expected) as info:
            load_state_dict(path)
        assert str(path) in str(info.value), case
    path = write_zip(tmp_path / "comment.pth", members, comment=b"hello")
    with pytest.raises(CheckpointError, match="5 bytes after its zip directory"):
        load_state_dict(path)


def test_damaged_storage_bytes_fail_their_crc(tmp_path):
    sd = {"a": torch.arange(16.0), "view": torch.arange(8.0)[2:5]}
    path = save(sd, tmp_path / "t.pth", "zip")
    for member in ("t/data/0", "t/data/1"):  # read whole / through a view
        data = bytearray(path.read_bytes())
        with zipfile.ZipFile(path) as archive:
            offset = archive.getinfo(member).header_offset
        name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
        data[offset + 30 + name_length + extra_length + 4] ^= 0x40
        damaged = tmp_path / "damaged.pth"
        damaged.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match="fail their CRC-32 check"):
            load_state_dict(damaged)


def test_hostile_files_keep_peak_memory_small(tmp_path, deflate_bomb):
    """Files that claim GiBs are refused with the memory use of a few MB."""
    paths = [
        _expanded_bomb(tmp_path / "expanded.pth"),  # 3 GiB of stride 0
        deflate_bomb,  # inflates to 2 GiB
        _binbytes_bomb(tmp_path / "binbytes.pth"),  # a 1 TiB pickle string
        _memo_bomb(tmp_path / "memo.pth"),  # a 1.5 GB memo table
    ]
    result = run_reader(
        """
        from keras_senet import torch_checkpoint

        base = peak_rss()
        for path in sys.argv[1:]:
            try:
                torch_checkpoint.load_state_dict(path)
            except torch_checkpoint.CheckpointError as error:
                print("refused", str(error)[:80])
        print(f"growth_mb {(peak_rss() - base) / 2**20:.1f}")
        """,
        *paths,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["refused"] * 4 + ["growth_mb"]
    assert float(lines[-1].split()[1]) < 300, result.stdout
