"""The front door: any state dict file, by content, checked before it is read."""

import struct
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch
from isolated_reader import run_reader

from keras_senet import state_dict
from keras_senet.state_dict import CheckpointError
from keras_senet.state_dict import load_state_dict

SD = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.num_batches_tracked": torch.tensor(7)}
SHAPES = {"conv.weight": (4, 3, 3, 3), "bn.num_batches_tracked": ()}


def write(path, fmt, tensors=SD):
    if fmt == "safetensors":
        safetensors.torch.save_file(tensors, path)
    else:
        torch.save(tensors, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def assert_equal(loaded, tensors=SD):
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.numpy().dtype
        np.testing.assert_array_equal(loaded[name], tensor.numpy())


@pytest.mark.parametrize("fmt, name", [
    ("zip", "weights.safetensors"), ("legacy", "weights.bin"),
    ("safetensors", "weights.pth"),
])
def test_format_is_told_by_content_not_name(tmp_path, fmt, name):
    assert_equal(load_state_dict(write(tmp_path / name, fmt)))


def test_safetensors_whose_length_starts_like_a_pickle(tmp_path):
    # Header length 0x180: the first byte is 0x80, a pickle's PROTO opcode.
    header = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    path = tmp_path / "w.bin"
    path.write_bytes(struct.pack("<Q", 0x180) + header.ljust(0x180) +
                     np.array([1.5, -2], "<f4").tobytes())
    assert path.read_bytes()[0] == 0x80
    np.testing.assert_array_equal(load_state_dict(path)["w"], [1.5, -2])


class Refused(Exception):
    pass


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_check_sees_the_shapes_and_its_error_propagates(tmp_path, fmt):
    path = write(tmp_path / "w", fmt)
    seen = []
    assert_equal(load_state_dict(path, check=seen.append))
    assert seen == [SHAPES]
    error = Refused("another model")

    def refuse(shapes):
        raise error

    with pytest.raises(Refused) as info:
        load_state_dict(path, check=refuse)
    assert info.value is error


def test_check_unwraps_training_checkpoints(tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": SD, "optimizer": {"lr": 0.1}}, path)
    seen = []
    assert_equal(load_state_dict(path, check=seen.append))
    assert seen == [SHAPES]


def test_check_then_budget_come_before_any_tensor_data(tmp_path):
    """A storage with a flipped bit is found only when the data is read:
    the check and the budget refuse the file first."""
    path = write(tmp_path / "t.pth", "zip")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        key = next(n for n in archive.namelist() if "/data/" in n)
        offset = archive.getinfo(key).header_offset
    name_length, extra_length = struct.unpack_from("<HH", data, offset + 26)
    data[offset + 30 + name_length + extra_length] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC-32"):
        load_state_dict(path)
    with pytest.raises(Refused):
        load_state_dict(path, check=lambda shapes: (_ for _ in ()).throw(Refused()),
                        max_bytes=0)
    with pytest.raises(CheckpointError, match="more than the limit"):
        load_state_dict(path, max_bytes=100)


def test_default_budget_and_bad_arguments(tmp_path):
    assert state_dict.DEFAULT_MAX_BYTES == 2 << 30
    path = write(tmp_path / "w.safetensors", "safetensors")
    for kwargs, shown in [
        ({"max_bytes": -1}, "max_bytes=-1"),
        ({"max_bytes": 1.5}, "max_bytes=1.5"),
        ({"max_bytes": True}, "max_bytes=True"),
        ({"check": "plan"}, "check='plan'"),
    ]:
        with pytest.raises(ValueError, match=f"Received: {shown}") as info:
            load_state_dict(path, **kwargs)
        assert not isinstance(info.value, CheckpointError)
    with pytest.raises(ValueError, match="Received: path=None"):
        load_state_dict(None)


def test_foreign_files_name_both_formats(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    with pytest.raises(CheckpointError) as info:
        load_state_dict(path)
    message = str(info.value)
    assert str(path) in message
    assert "not a PyTorch or safetensors checkpoint (looks like an HTML page" in message
    path.write_bytes(bytes(range(7, 200)))
    with pytest.raises(CheckpointError, match="unrecognised header 07 08 09"):
        load_state_dict(path)


def test_torch_free_and_peak_memory_near_the_returned_arrays(tmp_path):
    """All three formats read in a process without torch or Keras, each with
    a peak near the size of what it returns (the arrays, not also a copy of
    the file)."""
    big = {f"w{i}": torch.randn(1 << 21) for i in range(4)}  # 4 x 8 MiB
    paths = [write(tmp_path / f"big.{fmt}", fmt, big)
             for fmt in ("zip", "legacy", "safetensors")]
    result = run_reader(
        """
        import numpy as np
        from keras_senet.state_dict import load_state_dict

        np.zeros(1 << 16).sum()  # numpy's own first-use allocations
        base = peak_rss()
        for path in sys.argv[1:]:
            arrays = load_state_dict(path)
            print(sum(a.nbytes for a in arrays.values()), float(arrays["w3"][5]))
            del arrays
        print(peak_rss() - base)
        assert "keras" not in sys.modules and sys.modules["torch"] is None
        """,
        *paths,
    )
    assert result.returncode == 0, result.stderr
    *loads, growth = result.stdout.split("\n")[:-1]
    returned = 4 << 23
    assert loads == [f"{returned} {float(big['w3'][5])}"] * 3
    assert int(growth) < 1.25 * returned, (int(growth) / returned, result.stdout)


@pytest.mark.parametrize("fmt", ["zip", "legacy", "safetensors"])
def test_mutated_files_load_or_raise_checkpoint_error_only(tmp_path, fmt):
    """Random byte changes and cuts anywhere: the result is either the data
    (a flipped bit inside a legacy or safetensors tensor goes unnoticed) or a
    CheckpointError naming the path, never another exception."""
    good = write(tmp_path / "good", fmt, {"a": torch.randn(6, 5), "b": torch.arange(7)})
    content = good.read_bytes()
    rng = np.random.default_rng(1709)
    path = tmp_path / "mutated"
    for trial in range(80):
        data = bytearray(content)
        if trial % 4 == 3:
            data = data[: int(rng.integers(0, len(data)))]
        else:
            for at in rng.integers(0, len(data), int(rng.integers(1, 4))):
                data[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            loaded = load_state_dict(path, max_bytes=1 << 20)
        except CheckpointError as error:
            assert str(path) in str(error)
        else:
            assert all(isinstance(a, np.ndarray) for a in loaded.values())
