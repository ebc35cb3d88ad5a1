"""The peers' input pipelines: PIL + torchvision/timm transforms in a torch
DataLoader, as timm's train.py feeds a model.

No TensorFlow here: the DataLoader's workers start from a fresh interpreter
(``forkserver``) and import only this module, PIL, torch and timm, not the
benchmark's TensorFlow process.
"""

import itertools
import os
import time


class ImageFiles:
    """A map-style dataset: file ``index % len`` through ``transform``.

    Any index is valid, so a sampler can draw as many batches as wanted.
    """

    def __init__(self, paths, labels, transform):
        self.paths = list(paths)
        self.labels = list(labels)
        self.transform = transform

    def __len__(self):
        return 1 << 30

    def __getitem__(self, index):
        from PIL import Image

        i = index % len(self.paths)
        with open(self.paths[i], "rb") as f:
            image = Image.open(f)
            image = image.convert("RGB")  # loads the pixels (a full decode)
        return self.transform(image), self.labels[i]


def _one_thread(_worker_id):
    import torch

    torch.set_num_threads(1)


def timm_transform(training, image_size, crop_pct=0.875, interpolation="bilinear"):
    """timm's transform: random-resized crop (area 8-100 %, aspect 3/4-4/3),
    flip, to tensor, normalise for training (``color_jitter`` off, so that it
    does what ours does); resize the shorter side to size / crop_pct, centre
    crop, to tensor, normalise for evaluation."""
    import timm.data

    if training:
        return timm.data.create_transform(
            image_size, is_training=True, color_jitter=None, interpolation=interpolation,
        )
    return timm.data.create_transform(
        image_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
    )


class Loader:
    """Batches of a torch DataLoader with ``workers`` processes.

    `measure` returns images per second and the cores the loader used (the
    CPU time of this process and of its workers over the wall time).
    """

    def __init__(self, paths, transform, *, batch_size, workers):
        import multiprocessing

        import torch.utils.data

        self.batch_size = batch_size
        self.loader = torch.utils.data.DataLoader(
            ImageFiles(paths, [0] * len(paths), transform),
            batch_size=batch_size,
            shuffle=False,
            sampler=itertools.count(),  # indices 0, 1, 2, ...; files repeat
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=2 if workers > 0 else None,
            worker_init_fn=_one_thread,
            multiprocessing_context=multiprocessing.get_context("forkserver") if workers > 0 else None,
        )
        self._iterator = None

    def _cpu_seconds(self):
        import psutil

        me = psutil.Process(os.getpid())
        total = sum(me.cpu_times()[:2])
        for child in me.children(recursive=True):
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.NoSuchProcess:  # pragma: no cover
                pass
        return total

    def measure(self, batches, warmup):
        # A new pass each time: what a previous pass left buffered is not
        # counted in this one.
        self._iterator = iter(self.loader)
        for _ in range(warmup):
            next(self._iterator)
        cpu0, wall0 = self._cpu_seconds(), time.perf_counter()
        for _ in range(batches):
            next(self._iterator)
        wall = time.perf_counter() - wall0
        cpu = self._cpu_seconds() - cpu0
        self._iterator = None
        return self.batch_size * batches / wall, cpu / wall
