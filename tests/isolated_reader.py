"""Runs checkpoint-reader code in a fresh Python process without torch or Keras.

The readers (`keras_senet.tensor_file`, `torch_checkpoint`, `safetensors_file`,
`state_dict`) need NumPy only. The script given to `run_reader` runs with
``import torch`` failing and with the `keras_senet` package stubbed, so that
its ``__init__`` (Keras, TensorFlow) is not imported: the torch-free and the
peak-memory tests use it. Imported by the test modules as `isolated_reader`
(pytest puts this directory on ``sys.path``).

The script may call ``peak_rss()``: the process's peak resident memory in
bytes. On Linux that is ``VmHWM``: ``getrusage(RUSAGE_SELF).ru_maxrss``
would not do, since a child keeps the peak of the process it was forked
from across ``exec`` (here pytest's, with torch loaded: GBs).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "keras_senet"

_PREAMBLE = f"""\
import sys, types
sys.modules["torch"] = None
_package = types.ModuleType("keras_senet")
_package.__path__ = [{str(PACKAGE)!r}]
sys.modules["keras_senet"] = _package


def peak_rss():
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
"""


def run_reader(script, *args, timeout=120):
    """Runs ``script`` (dedented) with ``sys.argv[1:] == args``; returns the
    `subprocess.CompletedProcess` (text output)."""
    return subprocess.run(
        [sys.executable, "-c", _PREAMBLE + textwrap.dedent(script),
         *map(str, args)],
        capture_output=True, text=True, timeout=timeout,
    )
