"""Throughput of the training input pipeline against a plain JPEG decode.

    python -m benchmarks.input_pipeline [--num-images 300] [--batches 25]
        [--rounds 3] [--out benchmarks/results/input_pipeline.json]

Writes ImageNet-like JPEGs (about 500x375, sizes and content varied) into a
temporary image-folder tree, then measures, in the same process and with the
same tf.data parallelism:

- ``pipeline``: `training.data.build_dataset` in training mode (batch 64,
  224x224: crop-window decode, resize, flip, normalise, batching);
- ``raw_decode``: `tf.io.read_file` + a full `tf.io.decode_jpeg` of each file
  (TensorFlow's defaults: exact IDCT, fancy upsampling);
- ``pipeline_uint8`` (extra, not in the ratio): the same pipeline with
  ``output_dtype="uint8"``, for jobs that normalise on the accelerator.

All run with the same private thread pool (``threads``), AUTOTUNE map
parallelism and one intra-op thread per element. Figures are images per
second; per-core figures divide by the cores the process actually used (its
CPU time over the wall time), which is the fairer comparison on a shared
machine. The candidates are timed in interleaved rounds and the medians
kept. The last printed line is
``pipeline_img_s=<x> raw_decode_img_s=<y> ratio=<x/y>`` (float32 pipeline).
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from training import data as data_lib

BATCH_SIZE = 64
IMAGE_SIZE = 224
NUM_CLASSES = 10
DEFAULT_OUT = os.path.join("benchmarks", "results", "input_pipeline.json")


def synthetic_image(rng):
    """A photo-like image: smooth gradients, a few shapes, textures."""
    height = int(rng.integers(300, 451))
    width = int(rng.integers(400, 601))
    if rng.random() < 0.3:  # some portrait images
        height, width = width, height
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        fx, fy = rng.uniform(20, 200, 2)
        image[..., c] = 128 + 80 * np.sin(x / fx + rng.uniform(0, 6)) * np.cos(y / fy + rng.uniform(0, 6))
    for _ in range(int(rng.integers(3, 9))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(15, 120)
        mask = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[mask] = rng.uniform(0, 255, 3)
    # Texture at several scales (foliage, fur, gravel): ImageNet photos are
    # about 110 KB at this size, and entropy decoding is much of their cost.
    for scale in (1, 2, 4, 8):
        noise = rng.normal(0, rng.uniform(4, 18), (height // scale + 1, width // scale + 1, 1))
        image += np.repeat(np.repeat(noise, scale, 0), scale, 1)[:height, :width]
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(root, num_images, seed=0):
    """Writes an image-folder tree ``root/train/<class>/<i>.JPEG``."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_images):
        class_dir = os.path.join(root, "train", f"n{i % NUM_CLASSES:08d}")
        os.makedirs(class_dir, exist_ok=True)
        encoded = tf.io.encode_jpeg(synthetic_image(rng), quality=int(rng.integers(75, 96)))
        path = os.path.join(class_dir, f"{i:06d}.JPEG")
        tf.io.write_file(path, encoded)
        paths.append(path)
    return paths


def _timed(dataset, images_per_element, elements, warmup):
    """Images per second and cores used while consuming ``elements``."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(elements):
        next(iterator)
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    return images_per_element * elements / wall, cpu / wall


def raw_decode_dataset(paths, threads):
    def decode(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.shape(image)  # keep the decode, drop the copy to Python

    ds = tf.data.Dataset.from_tensor_slices(paths).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(BATCH_SIZE).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def run(num_images, batches, out, rounds=3):
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        paths = write_images(root, num_images)
        print(f"wrote {len(paths)} JPEGs in {time.perf_counter() - start:.1f} s")
        common = dict(
            image_size=IMAGE_SIZE, global_batch_size=BATCH_SIZE,
            private_threads=threads, shuffle_seed=0,
        )
        candidates = {
            "pipeline": data_lib.build_dataset(root, "train", **common),
            "raw_decode": raw_decode_dataset(paths, threads),
            "pipeline_uint8": data_lib.build_dataset(root, "train", output_dtype="uint8", **common),
        }
        warmup = max(2, batches // 10)
        # Interleaved rounds, medians: on a shared machine a neighbour's
        # burst would otherwise decide the ratio.
        timings = {name: [] for name in candidates}
        for _ in range(rounds):
            for name, dataset in candidates.items():
                timings[name].append(_timed(dataset, BATCH_SIZE, batches, warmup))
    figures = {}
    for name, runs in timings.items():
        figures[name] = {
            "img_s": statistics.median(ips for ips, _ in runs),
            "cores_used": statistics.median(cores for _, cores in runs),
            "img_s_per_core": statistics.median(ips / max(cores, 1e-6) for ips, cores in runs),
        }
    pipeline, raw, uint8 = figures["pipeline"], figures["raw_decode"], figures["pipeline_uint8"]
    ratio = pipeline["img_s"] / raw["img_s"]
    result = {
        "pipeline_img_s": round(pipeline["img_s"], 1),
        "raw_decode_img_s": round(raw["img_s"], 1),
        "ratio": round(ratio, 3),
        "pipeline_cores_used": round(pipeline["cores_used"], 2),
        "raw_decode_cores_used": round(raw["cores_used"], 2),
        "pipeline_img_s_per_core": round(pipeline["img_s_per_core"], 1),
        "raw_decode_img_s_per_core": round(raw["img_s_per_core"], 1),
        "ratio_per_core": round(pipeline["img_s_per_core"] / raw["img_s_per_core"], 3),
        "cores_for_3000_img_s": round(3000 / pipeline["img_s_per_core"], 1),
        "pipeline_uint8_img_s": round(uint8["img_s"], 1),
        "pipeline_uint8_img_s_per_core": round(uint8["img_s_per_core"], 1),
        "pipeline_uint8_cores_for_3000_img_s": round(3000 / uint8["img_s_per_core"], 1),
        "settings": {
            "num_images": num_images, "batches": batches, "rounds": rounds,
            "batch_size": BATCH_SIZE, "image_size": IMAGE_SIZE, "threads": threads,
            "statistic": "median of interleaved rounds",
        },
        "machine": {
            "platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "cpus_available": threads,
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "python": platform.python_version(), "tensorflow": tf.__version__,
        },
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    temporary = out + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(temporary, out)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(
        f"pipeline_uint8_img_s={uint8['img_s']:.1f} "
        f"per_core={uint8['img_s_per_core']:.1f} (extra; not in the ratio)"
    )
    print(f"pipeline_img_s={pipeline['img_s']:.1f} raw_decode_img_s={raw['img_s']:.1f} ratio={ratio:.3f}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--batches", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.batches < 1 or args.rounds < 1:
        parser.error(
            f"--num-images, --batches and --rounds must be positive. Received: "
            f"{args.num_images}, {args.batches}, {args.rounds}"
        )
    run(args.num_images, args.batches, args.out, args.rounds)


if __name__ == "__main__":
    main()
