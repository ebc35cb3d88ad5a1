"""What `pip install keras-senet` (a wheel) gives a user."""

import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """``(file names, METADATA text)`` of a wheel built from a copy of the
    checkout."""
    source = tmp_path_factory.mktemp("source")
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    for name in ("keras_senet", "training", "weights", "benchmarks", "tests"):
        shutil.copytree(
            os.path.join(ROOT, name), source / name,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    out = tmp_path_factory.mktemp("wheel")
    # Offline: the build uses the installed setuptools, no isolation.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
         "--no-build-isolation", "--no-index", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    (path,) = out.iterdir()
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        return names, archive.read(metadata).decode("utf-8")


def test_wheel_ships_the_licence_and_the_class_names(wheel):
    wheel_names, _ = wheel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel_names)
    assert "keras_senet/data/imagenet_classes.json" in wheel_names


def test_wheel_installs_no_generic_top_level_packages(wheel):
    """training/, weights/, benchmarks/ and tests/ run from a clone; a wheel
    must not put packages with such generic names into site-packages."""
    wheel_names, _ = wheel
    top = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"keras_senet"}


def test_wheel_declares_the_runtime_dependencies(wheel):
    # importlib_resources: tensorflow-datasets imports it without declaring it.
    _, metadata = wheel
    lines = metadata.splitlines()
    requires = [l.split(":", 1)[1] for l in lines if l.startswith("Requires-Dist:")]
    runtime = {
        re.split(r"[<>=!;\[ ]", r.strip())[0].lower().replace("_", "-")
        for r in requires
        if "extra ==" not in r
    }
    assert {"keras", "tensorflow", "tensorflow-datasets", "numpy", "h5py",
            "importlib-resources"} <= runtime
    assert not runtime & {"torch", "timm", "pytest", "safetensors", "matplotlib"}
    extras = {l.split(":", 1)[1].strip() for l in lines if l.startswith("Provides-Extra:")}
    assert {"demo", "plot", "onnx", "test"} <= extras
