"""Throughput of the input pipeline against a plain JPEG decode and the peers.

    python -m benchmarks.input_pipeline [--num-images 300] [--num-highres 12]
        [--batches 12] [--rounds 5] [--threads N] [--quick]

Writes JPEGs into a temporary image-folder tree, two sets: ImageNet-like
photos (about 500x375, sizes and content varied, ~80 KB) and phone-sized
photos (4000x3000, 12 MP, ~3 MB). On the same files and the same cores
(``--threads``, default: all this process may use) it measures, in one run:

- ``ours_train``: `training.data.build_dataset` in training mode (batch 64,
  224 px: crop-window decode at libjpeg's reduced scale where the window is
  at least twice 224, resize, flip, normalise, batching);
- ``ours_train_full_scale`` (12 MP set): the same, every window decoded at
  full scale, as before reduced-scale decoding: the speed-up of the latter;
- ``raw_decode``: `tf.io.read_file` + a full `tf.io.decode_jpeg` of each
  file (TensorFlow's defaults), nothing else: the floor of any pipeline that
  decodes whole images;
- ``pil_train``: timm's training transform (`timm.data.create_transform(224,
  is_training=True)`: RandomResizedCrop + flip + ToTensor + Normalize, colour
  jitter off as ours has none) on PIL images, in a torch DataLoader with one
  worker process per core, as timm's train.py runs it;
- ``ours_eval`` / ``timm_eval``: the eval transforms (shorter side to 256,
  centre crop 224, normalise), ours in `build_dataset` and timm's in the same
  DataLoader;
- ``ours_train_uint8`` (extra): the pipeline with ``output_dtype="uint8"``.

Figures are images per second (wall clock) and the cores each used (process
CPU time, DataLoader workers included, over wall time); per-core figures
divide the two. Each candidate's figure is the median of ``--rounds``
interleaved rounds (a fresh iterator, warmed up, then ``--batches``
batches), so that a neighbour's burst on a shared machine does not decide a
ratio. The load average is recorded. Writes
benchmarks/results/input_pipeline.{json,md}; the last line printed holds the
ratios.
"""

import argparse
import functools
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# torch and timm must be imported before TensorFlow (see tests/conftest.py).
import timm  # noqa: E402,F401
import torch  # noqa: E402,F401

from benchmarks import _peers  # noqa: E402
from benchmarks import _util  # noqa: E402

BATCH_SIZE = 64
HIGHRES_BATCH_SIZE = 16
IMAGE_SIZE = 224
NUM_CLASSES = 10
HIGHRES_SIZE = (3000, 4000)


def synthetic_image(rng, np):
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


def synthetic_photo(rng, np, tf):
    """A 12 MP phone-like photo: a smooth scene upscaled, with sensor-like
    fine noise (what a phone's JPEG at quality ~90 spends its bytes on)."""
    height, width = HIGHRES_SIZE
    scene = synthetic_image(rng, np)[:300, :400]
    image = tf.image.resize(tf.cast(scene, tf.float32), (height, width)).numpy()
    image += rng.normal(0, 3.0, (height, width, 1)).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_images(root, num_images, seed=0, highres=False):
    """Writes an image-folder tree ``root/train/<class>/<i>.JPEG`` (and a
    ``val`` link to it); returns the paths."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(num_images):
        class_dir = os.path.join(root, "train", f"n{i % NUM_CLASSES:08d}")
        os.makedirs(class_dir, exist_ok=True)
        pixels = synthetic_photo(rng, np, tf) if highres else synthetic_image(rng, np)
        quality = 90 if highres else int(rng.integers(75, 96))
        path = os.path.join(class_dir, f"{i:06d}.JPEG")
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=quality))
        paths.append(path)
    os.symlink("train", os.path.join(root, "val"))
    return sorted(paths)


class TfCandidate:
    """A tf.data pipeline timed as the peers are: a fresh iterator per
    round, warmed up, then ``batches`` batches."""

    def __init__(self, make_dataset, batch_size):
        self.dataset = make_dataset()
        self.batch_size = batch_size

    def measure(self, batches, warmup):
        iterator = iter(self.dataset)
        for _ in range(warmup):
            next(iterator)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(batches):
            next(iterator)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        del iterator
        return self.batch_size * batches / wall, cpu / wall


def raw_decode_dataset(tf, paths, threads, batch_size):
    def decode(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.shape(image)  # keep the decode, drop the copy to Python

    ds = tf.data.Dataset.from_tensor_slices(paths).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _full_scale_dataset(data_lib, transforms, root, **kwargs):
    """``build_dataset`` with every window decoded at full scale."""
    original = transforms.train_image
    transforms.train_image = functools.partial(original, reduced_scale=False)
    try:
        return data_lib.build_dataset(root, "train", **kwargs)
    finally:
        transforms.train_image = original


def candidates_for(tf, data_lib, transforms, root, paths, threads, batch_size, highres):
    common = dict(
        image_size=IMAGE_SIZE, global_batch_size=batch_size,
        private_threads=threads, shuffle_seed=0,
    )
    out = {
        "ours_train": TfCandidate(lambda: data_lib.build_dataset(root, "train", **common), batch_size),
        "raw_decode": TfCandidate(lambda: raw_decode_dataset(tf, paths, threads, batch_size), batch_size),
        "pil_train": _peers.Loader(
            paths, _peers.timm_transform(True, IMAGE_SIZE), batch_size=batch_size, workers=threads
        ),
    }
    if highres:
        out["ours_train_full_scale"] = TfCandidate(
            lambda: _full_scale_dataset(data_lib, transforms, root, **common), batch_size
        )
    else:
        out["ours_train_uint8"] = TfCandidate(
            lambda: data_lib.build_dataset(root, "train", output_dtype="uint8", **common), batch_size
        )
        out["ours_eval"] = TfCandidate(
            lambda: data_lib.build_dataset(
                root, "validation", repeat=True, crop_pct=0.875, **common
            ),
            batch_size,
        )
        out["timm_eval"] = _peers.Loader(
            paths, _peers.timm_transform(False, IMAGE_SIZE), batch_size=batch_size, workers=threads
        )
    return out


def stage_costs(tf, data_lib, transforms, root, paths, rounds):
    """CPU time per image of the train path's stages, one thread, no
    parallelism: where the time goes (see the notes in the results).

    Each stage is a sequential map (tf.data's parallelising rewrites off)
    over the same files, batched by 64; rounds alternate the stages and the
    medians are kept. The last line is the whole pipeline on one thread:
    the stages plus its own work (shuffling, error handling, batching).
    """
    window_kwargs = dict(area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def window_fn(seed):
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
        return lambda h, w: transforms.random_crop_window(h, w, seed, **window_kwargs)

    def last_value(image):  # keeps the work, returns little
        return tf.reshape(image, [-1])[-1]

    def crop(data, seed):
        return transforms.decode_window(
            data, window_fn(seed), dct_method=transforms.TRAIN_DCT_METHOD, min_size=IMAGE_SIZE
        )

    def resized(data, seed):
        return tf.image.resize(tf.cast(crop(data, seed), tf.float32), (IMAGE_SIZE, IMAGE_SIZE))

    def train(data, seed):
        return transforms.normalize(
            transforms.train_image(
                data, seed, image_size=IMAGE_SIZE, random_flip=True,
                interpolation="bilinear", **window_kwargs,
            ),
            mean, std,
        )

    stages = {
        "full_decode": lambda data, seed: last_value(tf.io.decode_jpeg(data, channels=3)),
        "crop_window_decode": lambda data, seed: last_value(crop(data, seed)),
        "+ resize": lambda data, seed: last_value(resized(data, seed)),
        "+ flip, normalise (train transform)": train,
    }
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    options.experimental_optimization.apply_default_optimizations = False
    options.experimental_optimization.map_parallelization = False
    options.experimental_optimization.inject_prefetch = False
    iterators = {}
    for name, fn in stages.items():
        ds = tf.data.Dataset.from_tensor_slices(paths).repeat().enumerate()
        ds = ds.map(lambda i, path, fn=fn: fn(tf.io.read_file(path), i)).batch(BATCH_SIZE)
        iterators[name] = iter(ds.with_options(options))
    pipeline = TfCandidate(lambda: data_lib.build_dataset(
        root, "train", image_size=IMAGE_SIZE, global_batch_size=BATCH_SIZE,
        private_threads=1, shuffle_seed=0,
    ), BATCH_SIZE)
    for iterator in iterators.values():
        next(iterator)
        next(iterator)
    times = {name: [] for name in [*iterators, "build_dataset, 1 thread"]}
    for _ in range(rounds):
        for _ in range(4):
            for name, iterator in iterators.items():
                start = time.process_time()
                next(iterator)
                times[name].append((time.process_time() - start) / BATCH_SIZE * 1e6)
        # Its own block: its threads work ahead, which must not land in the
        # figures of the stages above.
        images_per_s, cores = pipeline.measure(4, warmup=2)
        times["build_dataset, 1 thread"].append(cores / images_per_s * 1e6)
    full = statistics.median(times["full_decode"])
    return {
        name: {"cpu_us_per_image": round(statistics.median(v), 1),
               "vs_full_decode": round(statistics.median(v) / full, 3)}
        for name, v in times.items()
    }


def measure_set(candidates, rounds, batches, warmup):
    runs = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, candidate in candidates.items():
            runs[name].append(candidate.measure(batches, warmup))
    figures = {}
    for name, values in runs.items():
        figures[name] = {
            "img_s": round(statistics.median(ips for ips, _ in values), 1),
            "cores_used": round(statistics.median(cores for _, cores in values), 2),
            "img_s_per_core": round(
                statistics.median(ips / max(cores, 1e-6) for ips, cores in values), 1
            ),
            "rounds": [[round(ips, 1), round(cores, 2)] for ips, cores in values],
        }
    return figures


def key_ratios(imagenet, highres):
    def per_core(figures, a, b):
        return _util.ratio(figures[a]["img_s_per_core"], figures[b]["img_s_per_core"])

    def wall(figures, a, b):
        return _util.ratio(figures[a]["img_s"], figures[b]["img_s"])

    ratios = {
        "train_vs_pil_per_core": per_core(imagenet, "ours_train", "pil_train"),
        "train_vs_pil": wall(imagenet, "ours_train", "pil_train"),
        "train_vs_raw_decode": wall(imagenet, "ours_train", "raw_decode"),
        "train_vs_raw_decode_per_core": per_core(imagenet, "ours_train", "raw_decode"),
        "eval_vs_timm_eval_per_core": per_core(imagenet, "ours_eval", "timm_eval"),
        "train_cores_used": imagenet["ours_train"]["cores_used"],
        "raw_decode_cores_used": imagenet["raw_decode"]["cores_used"],
        "pil_train_cores_used": imagenet["pil_train"]["cores_used"],
    }
    if highres:
        ratios.update({
            "highres_reduced_vs_full_scale": wall(highres, "ours_train", "ours_train_full_scale"),
            "highres_train_vs_pil_per_core": per_core(highres, "ours_train", "pil_train"),
            "highres_train_vs_raw_decode": wall(highres, "ours_train", "raw_decode"),
        })
    return ratios


DESCRIPTIONS = {
    "ours_train": "build_dataset, training (crop-window decode, reduced scale when >= 2x, resize, flip, normalise)",
    "ours_train_full_scale": "the same, every window at full scale",
    "ours_train_uint8": "the same, output_dtype='uint8' (normalised on the accelerator)",
    "raw_decode": "read + full tf.io.decode_jpeg, nothing else",
    "pil_train": "timm train transform on PIL (RandomResizedCrop, flip, ToTensor, Normalize), DataLoader",
    "ours_eval": "build_dataset, eval (resize shorter side to 256, centre crop, normalise)",
    "timm_eval": "timm eval transform on PIL, DataLoader",
}


def to_markdown(info, sets, stages, ratios, notes):
    rows = []
    for set_name, figures in sets.items():
        for name, f in figures.items():
            rows.append((set_name, name, f["img_s"], f["cores_used"], f["img_s_per_core"],
                         DESCRIPTIONS[name]))
    parts = [
        "# Input pipeline throughput (CPU)",
        _util.machine_markdown(info) + f", load average at the end: {info['load_average']}",
        "Same files, same cores. img/s is wall clock; cores = process CPU time "
        "(DataLoader workers included) / wall time; per core = img/s / cores. "
        "Medians of interleaved rounds.",
        _util.markdown_table(
            ["set", "candidate", "img/s", "cores used", "img/s per core", "what"], rows
        ),
        "Where the train path's time goes (ImageNet-like set, one thread, CPU "
        "time per image; each line adds a stage to the one above):",
        _util.markdown_table(
            ["stage", "CPU us / image", "vs a full decode"],
            [(name, v["cpu_us_per_image"], v["vs_full_decode"]) for name, v in stages.items()],
        ),
        "Ratios: " + _util.ratios_line(ratios),
    ]
    if notes:
        parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts)


def explain(sets, stages, ratios, threads, load):
    """What the figures say where a target is missed, in numbers."""
    notes = []
    imagenet = sets["imagenet_like"]
    cost = {name: v["vs_full_decode"] for name, v in stages.items()}
    crop = cost["crop_window_decode"]
    resize = cost["+ resize"] - crop
    finish = cost["+ flip, normalise (train transform)"] - cost["+ resize"]
    pipeline = cost["build_dataset, 1 thread"] - cost["+ flip, normalise (train transform)"]
    per_core = ratios["train_vs_raw_decode_per_core"]
    if per_core is not None and per_core < 1.0:
        notes.append(
            f"ImageNet-like photos: per core the train path runs at {per_core:.2f}x a plain "
            f"full decode. On one thread, in units of a full decode: the crop-window decode "
            f"alone costs {crop:.2f} (libjpeg entropy-decodes every row from the top of the "
            f"file down to the window's bottom edge, so a random window saves only part of "
            f"the inverse DCT and colour conversion; windows this size are never twice 224, "
            f"so the reduced scale does not apply), the 224 px resize {resize:+.2f}, flip and "
            f"normalisation {finish:+.2f}, and the pipeline's own work (shuffling, the "
            f"error-catching groups, batching 600 KB float32 images) {pipeline:+.2f}. The "
            f"plain decode does none of these and returns only shapes: >= 1.0x is out of "
            f"reach for TensorFlow's decoders on images this small."
        )
    cores = imagenet["ours_train"]["cores_used"]
    if cores < 0.9 * threads:
        notes.append(
            f"Cores used: ours {cores:.2f}, plain decode {imagenet['raw_decode']['cores_used']:.2f}, "
            f"PIL DataLoader {imagenet['pil_train']['cores_used']:.2f} of the {threads} given, "
            f"load average {load[0]:.1f} from other processes on the same {threads} cores: "
            f"every candidate got the share the scheduler left it; per-core figures (CPU "
            f"time) compare them fairly."
        )
    highres = sets.get("highres_12mp")
    if highres:
        notes.append(
            f"12 MP photos: reduced-scale decoding is {ratios['highres_reduced_vs_full_scale']:.2f}x "
            f"the full-scale crop decode and {ratios['highres_train_vs_raw_decode']:.2f}x a plain "
            f"full decode: the IDCT makes the 1/2-1/8 image directly; entropy decoding, "
            f"the same at any scale, is what remains."
        )
    return notes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.input_pipeline",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--num-highres", type=int, default=12,
                        help="12 MP photos (0: skip that set)")
    parser.add_argument("--batches", type=int, default=12,
                        help="timed batches of 64 per round (the 12 MP set: a quarter, of 16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--results-name", default="input_pipeline")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_images, args.num_highres, args.batches, args.rounds = 40, 2, 2, 1
        if args.results_name == "input_pipeline":
            args.results_name = "input_pipeline_quick"
    if min(args.num_images, args.batches, args.rounds) < 1 or args.num_highres < 0:
        parser.error(
            "--num-images, --batches and --rounds must be positive and "
            f"--num-highres >= 0. Received: {args.num_images}, {args.batches}, "
            f"{args.rounds}, {args.num_highres}"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    threads = args.threads or _util.default_threads()
    import tensorflow as tf

    from training import data as data_lib
    from training import transforms

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = os.path.join(tmp, "imagenet_like")
        paths = write_images(root, args.num_images)
        highres_root = os.path.join(tmp, "highres")
        highres_paths = write_images(highres_root, args.num_highres, seed=1, highres=True) if args.num_highres else []
        sizes = [os.path.getsize(p) for p in paths]
        big = [os.path.getsize(p) for p in highres_paths]
        print(f"wrote {len(paths)} + {len(highres_paths)} JPEGs in {time.perf_counter() - start:.0f} s "
              f"(mean {sum(sizes) / len(sizes) / 1e3:.0f} KB"
              + (f", 12 MP mean {sum(big) / len(big) / 1e6:.1f} MB)" if big else ")"), flush=True)
        sets = {}
        sets["imagenet_like"] = measure_set(
            candidates_for(tf, data_lib, transforms, root, paths, threads, BATCH_SIZE, False),
            args.rounds, args.batches, warmup=2 * threads,
        )
        print("imagenet_like:", {k: v["img_s"] for k, v in sets["imagenet_like"].items()}, flush=True)
        stages = stage_costs(tf, data_lib, transforms, root, paths, args.rounds)
        print("stages (CPU us per image, 1 thread):",
              {k: v["cpu_us_per_image"] for k, v in stages.items()}, flush=True)
        if highres_paths:
            sets["highres_12mp"] = measure_set(
                candidates_for(tf, data_lib, transforms, highres_root, highres_paths, threads,
                               HIGHRES_BATCH_SIZE, True),
                args.rounds, max(1, args.batches // 4), warmup=threads,
            )
            print("highres_12mp:", {k: v["img_s"] for k, v in sets["highres_12mp"].items()}, flush=True)
    info = _util.machine_info(
        threads=threads, load_average=[round(x, 2) for x in os.getloadavg()],
    )
    ratios = key_ratios(sets["imagenet_like"], sets.get("highres_12mp"))
    notes = explain(sets, stages, ratios, threads, os.getloadavg())
    payload = {
        "machine": info,
        "args": vars(args),
        "settings": {"batch_size": BATCH_SIZE, "highres_batch_size": HIGHRES_BATCH_SIZE,
                     "image_size": IMAGE_SIZE, "threads": threads,
                     "statistic": "median of interleaved rounds"},
        "results": sets,
        "stages_imagenet_like": stages,
        "ratios": ratios,
        "notes": notes,
    }
    paths_written = _util.write_results(args.results_name, payload,
                                        to_markdown(info, sets, stages, ratios, notes))
    print("wrote", *paths_written)
    print(_util.ratios_line(ratios))
    return payload


if __name__ == "__main__":
    main()
