"""The front door for reading a state dict file, whatever its format.

`load_state_dict` reads PyTorch checkpoints (``torch.save``: the zip archive
or the legacy stream) and safetensors files (the Hugging Face hub's
``model.safetensors``), telling them apart by their content, not their
name. It refuses, before reading any tensor data, a file of the wrong model
(through the caller's ``check``) and a file whose tensors would need more
memory than ``max_bytes``; it then reads the tensors one at a time, so memory
peaks near the size of the arrays it returns. Neither torch nor the
safetensors package is needed.

The readers: `keras_senet.torch_checkpoint`, `keras_senet.safetensors_file`;
what they share (the error, the budget, the reads): `keras_senet.tensor_file`.
"""

from keras_senet import safetensors_file
from keras_senet import tensor_file
from keras_senet import torch_checkpoint
from keras_senet.tensor_file import DEFAULT_MAX_BYTES  # noqa: F401 (re-export)
from keras_senet.tensor_file import CheckpointError  # noqa: F401 (re-export)


def load_state_dict(path, *, max_bytes=None, check=None):
    """Reads a PyTorch or safetensors state dict into NumPy arrays.

    Args:
        path: a ``str`` or ``os.PathLike``: a file written by ``torch.save``
            (zip or legacy format) holding a state dict (or a dict holding
            one under ``"state_dict"`` or ``"model"``), or a safetensors file.
        max_bytes: the most memory, in bytes, the tensors may make us
            allocate: the sum of the returned arrays' sizes plus the
            temporary buffers that strided or converted (bfloat16, bool)
            tensors are read through. Checked from the metadata alone,
            before any tensor data is read. None: `DEFAULT_MAX_BYTES`
            (2 GiB).
        check: optional callable, called as ``check(shapes)`` with
            ``{name: shape tuple}`` of the state dict to be returned, after
            the metadata is parsed and before the budget check and any
            tensor data is read. It raises to refuse the file; its exception
            propagates unchanged (e.g.
            ``lambda shapes: convert.plan(model, shapes, layout)``).

    Returns:
        ``{name: numpy.ndarray}``: PyTorch files in the file's order,
        safetensors files in the order of their data. Each array is a
        C-contiguous, writeable copy in native byte order; bfloat16 becomes
        float32 (exact).

    Raises:
        CheckpointError: (a ValueError) a missing, unreadable, truncated,
            damaged, unsafe, foreign or too big file; the message names the
            path and the problem.
        ValueError: an argument is malformed.
        Whatever ``check`` raises.
    """
    path, max_bytes = tensor_file.check_arguments(path, max_bytes, check)
    return tensor_file.load(path, _sniff, max_bytes=max_bytes, check=check)


def _sniff(head):
    # safetensors first: its header length may start with 0x80, a pickle's
    # first byte; no PyTorch file has "{" at byte 8.
    parse = safetensors_file.parser_for(head) or torch_checkpoint.parser_for(head)
    if parse is None:
        raise tensor_file.describe_foreign(
            head, "PyTorch or safetensors checkpoint"
        )
    return parse
