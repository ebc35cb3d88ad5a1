"""Tests of the tf.data input pipeline (training/data.py and its parts).

All images are tiny and written here with PIL (an encoder independent of
TensorFlow); expected values come from NumPy / PIL, never from the code.
"""

import functools
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_senet.imagenet import wnids
from training import data as data_lib
from training import demo_data
from training import sources
from training import transforms

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
JPEG_TOL = 3.0 / 255.0 / STD.min()  # a few grey levels, normalised


# ----------------------------------------------------------------- helpers


def encode(array, fmt="JPEG", mode=None, quality=95):
    image = Image.fromarray(np.asarray(array, np.uint8))
    if mode is not None:
        image = image.convert(mode)
    buffer = io.BytesIO()
    kwargs = {"quality": quality} if fmt == "JPEG" else {}
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def solid(colour, height=24, width=32):
    return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 3))


def textured(seed, height=36, width=48):
    """A smooth colourful image (JPEG keeps it well) of the given size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        127 + 100 * np.sin(x / rng.uniform(4, 9) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(4, 9))
        for _ in range(3)
    ]
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def write(path, payload):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def class_grey(label):
    return 40 + 50 * label


def make_folder(root, classes=("b_cls", "a_cls", "c_cls"), per_class=2, val_dir="val"):
    """Class k (in sorted order) gets a solid grey of level class_grey(k)."""
    for split_dir in ("train", val_dir):
        for k, name in enumerate(sorted(classes)):
            for i in range(per_class):
                write(
                    os.path.join(root, split_dir, name, f"img{i}.JPEG"),
                    encode(solid([class_grey(k)] * 3, 20 + 4 * i, 28)),
                )
    return str(root)


def normalised(colour):
    return (np.asarray(colour, np.float32) / 255.0 - MEAN) / STD


def collect(ds):
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


def tf_example(encoded, label):
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


def make_tfrecords(directory, labels, split="validation", shards=2):
    """Writes ``labels`` round-robin into shards; each image is a grey whose
    level encodes its position in ``labels`` (position -> 10 * (pos + 1))."""
    os.makedirs(directory, exist_ok=True)
    names = [os.path.join(directory, f"{split}-{s:05d}-of-{shards:05d}") for s in range(shards)]
    writers = [tf.io.TFRecordWriter(n) for n in names]
    for pos, label in enumerate(labels):
        image = encode(solid([10 * (pos + 1)] * 3, 16, 16))
        writers[pos % shards].write(tf_example(image, label))
    for w in writers:
        w.close()
    sources.detect_label_offset.cache_clear()
    return str(directory)


def grey_to_position(images):
    """Undoes make_tfrecords' colour code on normalised images."""
    level = (images[..., 0].mean(axis=(1, 2)) * STD[0] + MEAN[0]) * 255.0
    return np.round(level / 10.0).astype(int) - 1


EVAL = dict(image_size=16, crop_pct=1.0)


# ----------------------------------------------------------------- demo


def test_demo_split_sizes_classes_and_balance():
    info = data_lib.describe("demo")
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert info.num_train + info.num_eval == 1797
    assert 0.75 < info.num_train / 1797 < 0.85
    from sklearn.datasets import load_digits

    target = load_digits().target
    parts = demo_data.split_indices(target)
    assert not set(parts["train"]) & set(parts["validation"])
    assert len(parts["validation"]) == info.num_eval
    for part in parts.values():
        counts = np.bincount(target[part], minlength=10)
        assert counts.min() >= 0.9 * counts.max()


def test_demo_images_show_the_digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    ds = data_lib.build_dataset("demo", "validation", image_size=32, global_batch_size=128, crop_pct=1.0)
    images, labels = collect(ds)
    assert images.shape == (demo_data.split_size("validation"), 32, 32, 3)
    np.testing.assert_array_equal(labels, digits.target[demo_data.split_indices(digits.target)["validation"]])
    # Grayscale JPEG -> RGB: the three channels carry the same grey.
    grey = (images * STD + MEAN) * 255.0
    assert np.abs(grey[..., 0] - grey[..., 1]).max() < 1.0
    # 4x4 block means give back the 8x8 digits (0..16 scaled to 0..255).
    blocks = grey[..., 0].reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))
    originals = digits.images[demo_data.split_indices(digits.target)["validation"]] * 255.0 / 16.0
    corr = [np.corrcoef(b.ravel(), o.ravel())[0, 1] for b, o in zip(blocks, originals)]
    assert np.median(corr) > 0.95
    class_means = np.array([images[labels == k].mean() for k in range(10)])
    assert np.ptp(class_means) > 0.1  # e.g. "1" has less ink than "0" or "8"


def test_demo_needs_scikit_learn(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"keras-senet\[demo\]"):
        demo_data.split_size("train")


# ----------------------------------------------------------------- transforms


def test_constant_colour_normalises_to_expected_value(tmp_path):
    colour = (200, 100, 50)
    write(str(tmp_path / "train" / "n1" / "a.JPEG"), encode(solid(colour, 30, 40)))
    write(str(tmp_path / "val" / "n1" / "a.png"), encode(solid(colour, 30, 40), "PNG"))
    expected = normalised(colour)
    for split in ("train", "validation"):
        ds = data_lib.build_dataset(str(tmp_path), split, image_size=8, global_batch_size=1, repeat=False)
        images, labels = collect(ds)
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert np.abs(images - expected).max() < JPEG_TOL


def test_eval_transform_matches_pil_resize_and_centre_crop():
    array = textured(3, 60, 80)
    data = tf.constant(encode(array, "PNG"))  # lossless: compare the transform alone
    ours = transforms.eval_image(data, image_size=24, crop_pct=0.75, interpolation="bilinear").numpy()
    # Independent reference: PIL, shorter side to floor(24 / 0.75) = 32, the
    # longer to int(32 * 80 / 60) = 42 (torchvision's rule), offsets rounded.
    resized = np.asarray(Image.fromarray(array).resize((42, 32), Image.BILINEAR), np.float32)
    top, left = round((32 - 24) / 2), round((42 - 24) / 2)
    reference = resized[top : top + 24, left : left + 24]
    assert ours.shape == (24, 24, 3) and ours.dtype == np.uint8
    assert np.abs(ours - reference).mean() < 2.0


def test_train_transform_whole_image_resize_and_flip():
    array = textured(4, 12, 12)
    array[:, :4] = 255  # make left and right tell apart
    data = tf.constant(encode(array, "PNG"))
    reference = np.asarray(Image.fromarray(array).resize((24, 24), Image.BILINEAR), np.float32)
    flips = 0
    for seed in range(24):
        out = transforms.train_image(
            data, tf.constant(seed, tf.int64), image_size=24, area_range=(1.0, 1.0),
            aspect_ratio_range=(0.5, 2.0), random_flip=True, interpolation="bilinear",
        ).numpy().astype(np.float32)
        straight = np.abs(out - reference).mean()
        flipped = np.abs(out[:, ::-1] - reference).mean()
        assert min(straight, flipped) < 3.0
        flips += flipped < straight
    assert 4 <= flips <= 20


def test_random_crop_windows_respect_the_ranges():
    height, width = 300, 400
    areas, aspects = [], []
    for seed in range(200):
        top, left, h, w = [
            int(v) for v in transforms.random_crop_window(
                tf.constant(height), tf.constant(width), tf.constant([seed, 7]),
                area_range=(0.08, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
            )
        ]
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        areas.append(h * w / (height * width))
        aspects.append(w / h)
    areas, aspects = np.array(areas), np.array(aspects)
    assert areas.min() >= 0.08 - 0.01 and areas.max() <= 1.0
    assert aspects.min() >= 0.75 * 0.97 and aspects.max() <= 4 / 3 * 1.03
    assert np.std(areas) > 0.1  # really random
    # No 3/4..4/3 window covers >= 99 % of a 10:1 image: centre fallback
    # with the aspect ratio clamped to 4/3 (100 x 133).
    window = [int(v) for v in transforms.random_crop_window(
        tf.constant(100), tf.constant(1000), tf.constant([1, 2]),
        area_range=(0.99, 1.0), aspect_ratio_range=(3 / 4, 4 / 3),
    )]
    assert window == [0, (1000 - 133) // 2, 100, 133]


def test_shapes_dtypes_ranges_and_batching(tmp_path):
    root = make_folder(tmp_path, per_class=3)  # 9 images per split
    train = data_lib.build_dataset(root, "train", image_size=16, global_batch_size=4, shuffle_seed=0)
    for images, labels in train.take(5):
        assert images.shape == (4, 16, 16, 3) and images.dtype == tf.float32
        assert labels.shape == (4,) and labels.dtype == tf.int32
        x = images.numpy()
        assert (x >= (0 - MEAN) / STD - 1e-5).all() and (x <= (1 - MEAN) / STD + 1e-5).all()
    sizes = [int(y.shape[0]) for _, y in data_lib.build_dataset(root, "validation", image_size=16, global_batch_size=4)]
    assert sizes == [4, 4, 1]  # eval keeps the remainder, no repeat


# ----------------------------------------------------------------- folders


def test_folder_labels_follow_sorted_class_names(tmp_path):
    root = make_folder(tmp_path, val_dir="validation")
    info = data_lib.describe(root)
    assert info.class_names == ("a_cls", "b_cls", "c_cls")
    assert (info.num_classes, info.num_train, info.num_eval) == (3, 6, 6)
    images, labels = collect(data_lib.build_dataset(root, "validation", global_batch_size=4, **EVAL))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])
    for image, label in zip(images, labels):
        assert np.abs(image - normalised([class_grey(label)] * 3)).max() < JPEG_TOL


def test_folder_class_checks(tmp_path):
    root = make_folder(tmp_path / "a")
    write(str(tmp_path / "a" / "val" / "zz_extra" / "x.JPEG"), encode(solid([9, 9, 9])))
    with pytest.raises(ValueError, match="zz_extra"):
        data_lib.build_dataset(root, "validation", global_batch_size=2, **EVAL)
    ours = wnids()
    for name in ours[:-1] + ["n99999999"]:
        os.makedirs(tmp_path / "b" / "train" / name)
    with pytest.raises(ValueError, match="WordNet ids"):
        sources.folder_classes(str(tmp_path / "b"))
    os.rename(tmp_path / "b" / "train" / "n99999999", tmp_path / "b" / "train" / ours[-1])
    assert list(sources.folder_classes(str(tmp_path / "b"))) == ours


def test_hidden_entries_are_never_classes_or_images(tmp_path):
    root = make_folder(tmp_path)
    for split_dir in ("train", "val"):
        for junk in (".ipynb_checkpoints", "__MACOSX", ".Trash-0"):
            write(str(tmp_path / split_dir / junk / "img0.JPEG"), encode(solid([250] * 3)))
        # macOS AppleDouble companions sit beside the images, named "._*".
        write(str(tmp_path / split_dir / "a_cls" / "._img0.JPEG"), b"\x00\x05\x16\x07 resource fork")
    info = data_lib.describe(root)
    assert info.class_names == ("a_cls", "b_cls", "c_cls")
    assert (info.num_train, info.num_eval) == (6, 6)
    data_lib.reset_skipped_files()
    images, labels = collect(data_lib.build_dataset(root, "validation", global_batch_size=4, **EVAL))
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])  # not shifted by one
    assert data_lib.skipped_files() == 0


def test_imagenet_tree_with_extra_folders_is_refused(tmp_path):
    ours = wnids()
    train = tmp_path / "train"
    for name in ours + [".ipynb_checkpoints", "__MACOSX"]:
        os.makedirs(train / name)
    assert list(sources.folder_classes(str(tmp_path))) == ours  # hidden ones ignored
    os.makedirs(train / "backup")
    with pytest.raises(ValueError, match=r"1000 ImageNet-1k class folders and 1 other.*'backup'"):
        data_lib.describe(str(tmp_path))
    # 1000 folders, one of them not a WordNet id: names what is off.
    os.rename(train / ours[5], train / "n99999999")
    os.rmdir(train / "backup")
    with pytest.raises(ValueError, match=rf"missing: \['{ours[5]}'\].*'n99999999'"):
        sources.folder_classes(str(tmp_path))
    # A larger tree of WordNet ids only (ImageNet-21k style) is its own dataset.
    os.rename(train / "n99999999", train / ours[5])
    os.makedirs(train / "n99999999")
    assert len(sources.folder_classes(str(tmp_path))) == 1001


def test_odd_directory_entries_are_skipped_and_named(tmp_path, caplog):
    """A non-UTF-8 file or class folder name, link loops and a broken link
    are left out and named in the log; everything else trains."""
    root = make_folder(tmp_path)
    good = encode(solid([class_grey(0)] * 3))
    split = os.fsencode(str(tmp_path / "train"))
    with open(split + b"/a_cls/caf\xe9.JPEG", "wb") as f:
        f.write(good)
    os.makedirs(split + b"/d_\xe9t\xe9")
    with open(split + b"/d_\xe9t\xe9/x.JPEG", "wb") as f:
        f.write(good)
    os.symlink("loop_b", tmp_path / "train" / "loop_a")
    os.symlink("loop_a", tmp_path / "train" / "loop_b")
    os.symlink("self.JPEG", tmp_path / "train" / "a_cls" / "self.JPEG")
    os.symlink("missing.JPEG", tmp_path / "train" / "a_cls" / "gone.JPEG")
    with caplog.at_level("WARNING", logger="training.sources"):
        info = data_lib.describe(root)
        ds = data_lib.build_dataset(root, "train", image_size=8, global_batch_size=2, repeat=False, shuffle_seed=0)
        images, labels = collect(ds)
    assert info.class_names == ("a_cls", "b_cls", "c_cls") and info.num_train == 6
    assert len(images) == 6
    logged = caplog.text
    for name in ("caf\\xe9.JPEG", "d_\\xe9t\\xe9", "loop_a", "loop_b", "self.JPEG", "gone.JPEG"):
        assert name in logged, name
    assert logged.count("caf\\xe9.JPEG") == 1  # once per process, not per listing


def test_eval_is_deterministic(tmp_path):
    for k in range(10):
        write(str(tmp_path / "val" / f"c{k % 3}" / f"{k}.JPEG"), encode(textured(k)))
    kwargs = dict(image_size=16, global_batch_size=3)
    first = collect(data_lib.build_dataset(str(tmp_path), "validation", **kwargs))
    second = collect(data_lib.build_dataset(str(tmp_path), "validation", cache=True, **kwargs))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


# ----------------------------------------------------------------- odd files


@pytest.fixture
def odd_folder(tmp_path):
    """Four odd but valid files, two broken ones, one normal file."""
    original = textured(5)
    good = encode(original)
    files = {
        "cmyk.JPEG": encode(original, mode="CMYK"),
        "gray.JPEG": encode(original, mode="L"),
        "png.JPEG": encode(original, "PNG"),
        "normal.JPEG": good,
        "trailer.JPEG": good + b"\x00" * 64,
        "truncated.JPEG": good[: len(good) * 3 // 4],
        "garbage.JPEG": b"\x00 not an image at all " * 20,
    }
    for name, payload in files.items():
        write(str(tmp_path / "train" / "n0" / name), payload)
        write(str(tmp_path / "val" / "n0" / name), payload)
    return str(tmp_path), original


def test_odd_files_decode_to_rgb():
    original = textured(6)
    for mode, fmt in (("CMYK", "JPEG"), (None, "PNG"), ("L", "JPEG")):
        image = transforms.decode_full(tf.constant(encode(original, fmt, mode=mode))).numpy()
        assert image.shape == original.shape
        if mode == "L":
            assert (image[..., 0] == image[..., 2]).all()
            expected = np.asarray(Image.fromarray(original).convert("L"), np.float32)[..., None]
        else:
            expected = original.astype(np.float32)
        assert np.abs(image - expected).mean() < 4.0, mode


def test_truncated_jpeg_is_rejected_even_when_window_is_present():
    good = encode(textured(7, 64, 64))
    truncated = tf.constant(good[: len(good) * 2 // 3])
    assert transforms.jpeg_is_complete(tf.constant(good))
    assert not transforms.jpeg_is_complete(truncated)
    # TensorFlow itself decodes a window that lies in the part present...
    assert tf.image.decode_and_crop_jpeg(truncated, [0, 0, 8, 8], channels=3).shape == (8, 8, 3)
    # ...ours does not.
    with pytest.raises(tf.errors.InvalidArgumentError, match="end-of-image"):
        transforms.decode_window(truncated, lambda h, w: (0, 0, 8, 8))


def _pil_decodes(payload):
    try:
        Image.open(io.BytesIO(payload)).load()
        return True
    except OSError:
        return False


def _jpeg_variants():
    """Baseline and progressive JPEGs, with an EXIF-like APP1 segment that
    holds a complete thumbnail (its own SOS and EOI) in front."""
    array = textured(9, 48, 64)
    thumb = encode(textured(10, 8, 8))
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    for progressive in (False, True):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=90, progressive=progressive)
        plain = buffer.getvalue()
        yield plain
        yield plain[:2] + app1 + plain[2:]


def test_jpeg_completeness_agrees_with_pil_on_cuts_and_trailers():
    """Every cut of the file (each of the last 40 bytes, and throughout) and
    every kind of trailer: the pipeline takes exactly what PIL decodes."""
    decode = tf.function(lambda x: transforms.decode_window(x, lambda h, w: (0, 0, 8, 8)))

    def ours(payload):
        try:
            decode(tf.constant(payload))
            return True
        except tf.errors.InvalidArgumentError:
            return False

    rng = np.random.default_rng(0)
    checked = 0
    for jpeg in _jpeg_variants():
        n = len(jpeg)
        cuts = sorted(set(range(n - 40, n)) | set(range(4, n, n // 23)))
        payloads = [jpeg[:cut] for cut in cuts] + [
            jpeg + b"\x00" * 64,  # padding
            jpeg + b"\xff" * 100,  # fill bytes
            jpeg + b"\x00\x00\x00\x18ftypmp42" + rng.bytes(5000),  # Motion Photo video
            jpeg + encode(textured(11, 16, 16)),  # a second image (MPF)
        ]
        for payload in payloads:
            assert ours(payload) == _pil_decodes(payload), (len(payload), n)
            checked += 1
    assert checked > 200
    # Trailers are used, truncations refused; the latter fail with our message.
    jpeg = next(_jpeg_variants())
    assert transforms.jpeg_is_complete(tf.constant(jpeg + b"\x00" * 64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="end-of-image"):
        decode(tf.constant(jpeg[:-200]))


def test_jpegs_with_trailers_train_and_evaluate(tmp_path):
    good = encode(solid([120, 120, 120], 20, 20))
    payloads = {
        "padded.JPEG": good + b"\x00" * 64,
        "motion.JPEG": good + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40,
        "plain.JPEG": good,
        "cut.JPEG": good[:-2],
    }
    for name, payload in payloads.items():
        write(str(tmp_path / "train" / "n0" / name), payload)
        write(str(tmp_path / "val" / "n0" / name), payload)
    for split in ("train", "validation"):
        data_lib.reset_skipped_files()
        images, _ = collect(data_lib.build_dataset(
            str(tmp_path), split, image_size=8, global_batch_size=1, repeat=False
        ))
        assert len(images) == 3 and np.abs(images - normalised([120] * 3)).max() < JPEG_TOL
        assert [os.path.basename(n) for n in data_lib.skipped_file_names()] == ["cut.JPEG"]


@pytest.mark.parametrize("split", ["train", "validation"])
def test_corrupt_files_are_skipped_and_counted(odd_folder, split):
    root, _ = odd_folder
    data_lib.reset_skipped_files()
    ds = data_lib.build_dataset(
        root, split, image_size=16, global_batch_size=1, repeat=False, area_range=(0.05, 0.06)
    )
    images, _ = collect(ds)
    assert len(images) == 5  # cmyk, gray, png, trailer, normal
    assert data_lib.skipped_files() == 2
    assert sorted(os.path.basename(n) for n in data_lib.skipped_file_names()) == [
        "garbage.JPEG", "truncated.JPEG"
    ]


@pytest.mark.parametrize("broken", ["truncated.JPEG", "garbage.JPEG"])
def test_strict_mode_names_the_broken_file(tmp_path, broken, odd_folder):
    root, _ = odd_folder
    for name in ("truncated.JPEG", "garbage.JPEG"):
        if name != broken:
            os.remove(os.path.join(root, "val", "n0", name))
    ds = data_lib.build_dataset(root, "validation", global_batch_size=8, strict=True, **EVAL)
    with pytest.raises(tf.errors.InvalidArgumentError, match=broken):
        collect(ds)


def test_corrupt_file_logger_counts_validation_skips_per_epoch(odd_folder, caplog):
    root, _ = odd_folder
    callback = data_lib.CorruptFileLogger()
    callback.on_train_begin()
    for epoch in range(2):
        logs = {}
        callback.on_epoch_begin(epoch)
        with caplog.at_level("WARNING", logger="training.data"):
            caplog.clear()
            collect(data_lib.build_dataset(root, "validation", global_batch_size=8, **EVAL))
            callback.on_epoch_end(epoch, logs)
        assert logs["skipped_files"] == 2  # this epoch's pass, not a running total
        lines = [r.getMessage() for r in caplog.records if r.name == "training.data"]
        assert len(lines) == 1 and lines[0].startswith(f"Epoch {epoch + 1}: skipped 2 ")
        assert "from 2 file(s)" in lines[0]
        assert "garbage.JPEG" in lines[0] and "truncated.JPEG" in lines[0]
    callback.on_train_end()
    assert callback.total == 4


def test_corrupt_file_logger_holds_training_skips_until_their_step():
    """A training pipeline's skip counts when training reaches the step
    whose batch holds the next image; skips decoded ahead of the last step
    are dropped at the end of training."""
    stream = data_lib._Stream(images_per_step=8, held_back=True)
    callback = data_lib.CorruptFileLogger()
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    data_lib._SKIPPED.record(stream, tf.constant([b"early"]), 3)  # step 0
    data_lib._SKIPPED.record(stream, tf.constant([b"later"]), 17)  # step 2
    data_lib._SKIPPED.record(stream, tf.constant([b"ahead"]), 40)  # step 5
    callback.on_train_batch_end(0)
    callback.on_train_batch_end(1)  # steps 0 and 1 taken
    logs = {}
    callback.on_epoch_end(0, logs)
    assert logs["skipped_files"] == 1
    callback.on_epoch_begin(1)
    callback.on_train_batch_end(1)  # steps 2 and 3 (batch counts from 0 per epoch)
    callback.on_epoch_end(1, logs)
    assert logs["skipped_files"] == 1 and callback.total == 2
    callback.on_train_end()
    assert callback._held == []  # "ahead" was never trained on


@pytest.mark.slow
def test_one_epoch_fit_counts_each_skipped_file_once(tmp_path, caplog):
    """The decoders run passes ahead of a short run; the epoch's count is
    that of the data trained on: exactly the broken files that lie, in the
    shuffled order, before the last image trained on (before: the running
    total of every pass decoded, several times the broken files)."""
    import keras

    good, broken, batch, steps = 250, 6, 60, 2
    payload = encode(solid([90, 90, 90], 16, 16))
    for i in range(good + broken):
        data = payload if i < good else payload[: len(payload) // 2]
        write(str(tmp_path / "train" / f"c{i % 2}" / f"{i:03d}.JPEG"), data)
    kwargs = dict(training=True, input_context=None, seed=3)
    order = [int(os.path.basename(n.decode())[:3]) for _, _, n in
             sources.folder_source(str(tmp_path), "train", **kwargs).dataset.as_numpy_iterator()]
    is_good = np.array(order) < good
    kept_before = np.cumsum(is_good) - is_good
    expected = sum(
        1 for index, position in zip(order, kept_before)
        if index >= good and position < batch * steps
    )
    assert 0 < expected < broken  # this seed: some broken files in the part trained on
    ds = data_lib.build_dataset(
        str(tmp_path), "train", image_size=8, global_batch_size=batch, shuffle_seed=3,
        deterministic=True,  # the output order is the shuffled files' order
    )
    model = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2),
    ])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = data_lib.CorruptFileLogger()
    with caplog.at_level("WARNING", logger="training.data"):
        history = model.fit(ds, epochs=1, steps_per_epoch=steps, callbacks=[callback], verbose=0)
    assert history.history["skipped_files"] == [expected]
    messages = [r.getMessage() for r in caplog.records if r.name == "training.data"]
    if expected:
        assert len(messages) == 1 and messages[0].startswith(f"Epoch 1: skipped {expected} ")
    else:
        assert messages == []


# ----------------------------------------------------------------- TFRecord


@pytest.mark.parametrize(
    "labels, expected_offset",
    [([1, 1000, 500, 7, 1000, 2], 1), ([0, 999, 500, 7, 0, 2], 0)],
)
def test_tfrecord_label_offset_is_detected(tmp_path, labels, expected_offset):
    root = make_tfrecords(tmp_path, labels)
    images, got = collect(data_lib.build_dataset(root, "validation", global_batch_size=4, **EVAL))
    positions = grey_to_position(images)
    assert sorted(positions) == list(range(len(labels)))
    np.testing.assert_array_equal(got, np.array(labels)[positions] - expected_offset)


def test_tfrecord_ambiguous_labels_need_the_flag(tmp_path):
    labels = [1, 5, 999, 3]
    root = make_tfrecords(tmp_path, labels)
    with pytest.raises(ValueError, match="label_offset"):
        data_lib.build_dataset(root, "validation", global_batch_size=4, **EVAL)
    images, got = collect(
        data_lib.build_dataset(root, "validation", global_batch_size=4, label_offset=1, **EVAL)
    )
    np.testing.assert_array_equal(got, np.array(labels)[grey_to_position(images)] - 1)


def test_tfrecord_label_out_of_range_at_run_time(tmp_path):
    root = make_tfrecords(tmp_path, [0, 3, 1000, 4])  # 0 and 1000: detection refuses
    with pytest.raises(ValueError, match="both 0 and 1000"):
        data_lib.build_dataset(root, "validation", global_batch_size=4, **EVAL)
    ds = data_lib.build_dataset(root, "validation", global_batch_size=4, label_offset=0, **EVAL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="validation-0000"):
        collect(ds)


def test_tfrecord_describe_standard_layout(tmp_path):
    for s in range(1024):
        (tmp_path / f"train-{s:05d}-of-01024").touch()
    info = data_lib.describe(str(tmp_path))
    assert (info.num_classes, info.num_train, info.num_eval) == (1000, 1_281_167, None)
    assert list(info.class_names) == wnids()


# ----------------------------------------------------------------- sharding


def _names(source):
    return [n.decode() for _, _, n in source.dataset.as_numpy_iterator()]


@pytest.mark.parametrize("workers", [2, 3])
def test_sharding_is_disjoint_and_complete(tmp_path, workers):
    folder = make_folder(tmp_path / "f", per_class=3)
    records = make_tfrecords(str(tmp_path / "r"), list(range(1, 12)), shards=2)
    for kind, build in (
        ("folder", lambda ctx: sources.folder_source(folder, "validation", training=False, input_context=ctx, seed=None)),
        ("tfrecord", lambda ctx: sources.tfrecord_source(
            records, "validation", training=False, input_context=ctx, seed=None,
            label_offset=1, shuffle_buffer_size=8)),
        ("demo", lambda ctx: sources.demo_source("validation", training=False, input_context=ctx, seed=None)),
    ):
        everything = _names(build(None))
        parts = [
            _names(build(tf.distribute.InputContext(workers, i, workers)))
            for i in range(workers)
        ]
        assert sorted(sum(parts, [])) == sorted(everything), kind
        assert len(set(sum(parts, []))) == len(everything), kind
        assert all(parts), kind


def test_input_context_sets_per_replica_batch(tmp_path):
    root = make_folder(tmp_path, per_class=3)
    ctx = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=3)
    ds = data_lib.build_dataset(root, "train", image_size=8, global_batch_size=12, input_context=ctx)
    images, labels = next(iter(ds))
    assert images.shape == (4, 8, 8, 3)


# ----------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data="/no/such/dir"), "data"),
        (dict(data="demo", split="test"), "split"),
        (dict(interpolation="cubic-ish"), "interpolation"),
        (dict(crop_pct=1.5), "crop_pct"),
        (dict(area_range=(0.5, 0.1)), "area_range"),
        (dict(global_batch_size=0), "global_batch_size"),
    ],
)
def test_bad_arguments_raise_value_errors(kwargs, match):
    arguments = dict(data="demo", split="train", image_size=16, global_batch_size=4)
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        data_lib.build_dataset(arguments.pop("data"), arguments.pop("split"), **arguments)


def test_bad_label_offset(tmp_path):
    root = make_tfrecords(tmp_path, [1, 1000])
    with pytest.raises(ValueError, match="label_offset"):
        data_lib.build_dataset(root, "validation", global_batch_size=2, label_offset=2, **EVAL)


# ----------------------------------------------------------------- fast path


def test_many_corrupt_files_across_groups_are_all_counted_and_named(tmp_path):
    """More files than one decode group holds, broken ones spread over them
    (one group entirely broken): every good file comes out once, every broken
    one is counted and named once."""
    group = data_lib._GROUP_SIZE
    good = encode(solid([120, 120, 120], 20, 20))
    broken_payloads = [
        good[: len(good) // 2],  # truncated JPEG: no end-of-image marker
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # a PNG signature, nothing valid after
        b"GIF89a garbage" * 4,
    ]
    names, broken = [], set()
    total = 3 * group + 5
    for i in range(total):
        name = f"{i:04d}.JPEG"
        in_broken_group = group <= i < 2 * group
        if in_broken_group or i % 7 == 3:
            payload = broken_payloads[i % len(broken_payloads)]
            broken.add(name)
        else:
            payload = good
        write(str(tmp_path / "val" / "n0" / name), payload)
        names.append(name)
    data_lib.reset_skipped_files()
    images, labels = collect(data_lib.build_dataset(
        str(tmp_path), "validation", global_batch_size=16, **EVAL
    ))
    assert len(images) == total - len(broken)
    assert np.abs(images - normalised([120] * 3)).max() < JPEG_TOL
    assert data_lib.skipped_files() == len(broken)
    assert sorted(os.path.basename(n) for n in data_lib.skipped_file_names()) == sorted(broken)


def test_strict_names_a_broken_file_in_a_later_group(tmp_path):
    good = encode(solid([60, 60, 60], 20, 20))
    for i in range(data_lib._GROUP_SIZE + 3):
        write(str(tmp_path / "val" / "n0" / f"{i:04d}.JPEG"), good)
    write(str(tmp_path / "val" / "n0" / "zz_broken.JPEG"), good[:-40])
    ds = data_lib.build_dataset(str(tmp_path), "validation", global_batch_size=8, strict=True, **EVAL)
    with pytest.raises(tf.errors.InvalidArgumentError, match="zz_broken"):
        collect(ds)


def test_training_skips_and_counts_corrupt_files(odd_folder):
    root, _ = odd_folder
    data_lib.reset_skipped_files()
    ds = data_lib.build_dataset(root, "train", image_size=16, global_batch_size=4, shuffle_seed=1)
    for images, labels in ds.take(6):  # repeats: each epoch skips the two again
        assert images.shape == (4, 16, 16, 3)
    assert data_lib.skipped_files() >= 2
    assert set(os.path.basename(n) for n in data_lib.skipped_file_names()) == {
        "garbage.JPEG", "truncated.JPEG"
    }


@pytest.mark.parametrize("split", ["train", "validation"])
def test_uint8_output_is_the_unnormalised_image(tmp_path, split):
    for k in range(3):
        write(str(tmp_path / "train" / "n0" / f"{k}.JPEG"), encode(textured(k)))
        write(str(tmp_path / "val" / "n0" / f"{k}.JPEG"), encode(textured(k)))
    kwargs = dict(image_size=12, global_batch_size=3, repeat=False, shuffle_seed=5, deterministic=True)
    pixels, _ = collect(data_lib.build_dataset(str(tmp_path), split, output_dtype="uint8", **kwargs))
    floats, _ = collect(data_lib.build_dataset(str(tmp_path), split, **kwargs))
    assert pixels.dtype == np.uint8 and pixels.shape == floats.shape == (3, 12, 12, 3)
    # Independent formula on the uint8 pixels: (x / 255 - mean) / std. The
    # float path skips the rounding on the train side: half a grey level.
    tolerance = 0.51 / 255.0 / STD.min() if split == "train" else 1e-5
    np.testing.assert_allclose((pixels / 255.0 - MEAN) / STD, floats, atol=tolerance)
    with pytest.raises(ValueError, match="output_dtype"):
        data_lib.build_dataset(str(tmp_path), split, output_dtype="float16", **kwargs)


def test_eval_cache_gives_the_same_normalised_images(tmp_path):
    for k in range(4):
        write(str(tmp_path / "val" / "n0" / f"{k}.JPEG"), encode(textured(k)))
    kwargs = dict(image_size=16, global_batch_size=3)
    plain = collect(data_lib.build_dataset(str(tmp_path), "validation", **kwargs))
    cached = data_lib.build_dataset(str(tmp_path), "validation", cache=True, repeat=True, **kwargs)
    images = np.concatenate([x.numpy() for x, _ in cached.take(4)])[:8]
    np.testing.assert_array_equal(images, np.concatenate([plain[0], plain[0]]))


def test_train_decode_with_fast_idct_stays_close_to_exact_decode():
    array = textured(8, 64, 64)
    data = tf.constant(encode(array, quality=90))
    exact = np.asarray(Image.open(io.BytesIO(encode(array, quality=90))).convert("RGB"), np.float32)
    reference = np.asarray(Image.fromarray(exact.astype(np.uint8)).resize((32, 32), Image.BILINEAR), np.float32)
    # The whole 64 px image to 32 px: by default decoded at libjpeg's half
    # scale (DCT scaling, not a bilinear filter: a little further off).
    for reduced_scale, tolerance in ((False, 2.0), (True, 3.0)):
        out = transforms.train_image(
            data, tf.constant(3, tf.int64), image_size=32, area_range=(1.0, 1.0),
            aspect_ratio_range=(0.5, 2.0), random_flip=False, interpolation="bilinear",
            reduced_scale=reduced_scale,
        ).numpy()
        assert out.dtype == np.float32 and out.shape == (32, 32, 3)
        assert np.abs(out - reference).mean() < tolerance, reduced_scale


@pytest.fixture(scope="module")
def smooth_photo():
    """A 1200x900 JPEG of smooth colour gradients (and its pixels)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:900, 0:1200].astype(np.float32)
    array = np.stack([
        128 + 100 * np.sin(x / 90) * np.cos(y / 70),
        128 + 90 * np.cos(x / 130 + 1),
        128 + 60 * np.sin((x + y) / 150),
    ], -1)
    array = np.clip(array + rng.normal(0, 2, array.shape), 0, 255).astype(np.uint8)
    return encode(array, quality=92), array


@pytest.mark.parametrize(
    "window, ratio",
    [((0, 0, 900, 1200), 8), ((100, 150, 600, 800), 8), ((13, 29, 517, 611), 8),
     ((37, 51, 300, 260), 4), ((200, 300, 140, 200), 2), ((200, 300, 120, 200), 1)],
)
def test_reduced_scale_decode_stays_within_a_few_grey_levels(smooth_photo, window, ratio):
    """A window at least twice the output decodes at libjpeg's 1/2, 1/4 or
    1/8 scale; after the resize it is within a few grey levels of the full
    scale decode of the same (grid-snapped) window, and closer than that to
    an antialiased resize of the original pixels."""
    payload, array = smooth_photo
    size = 64
    decode = functools.partial(
        transforms.decode_window, tf.constant(payload), dct_method="INTEGER_FAST"
    )
    reduced = decode(lambda h, w: window, min_size=size).numpy()
    # Independently: the window snapped to multiples of the ratio.
    top, left, height, width = window
    y0, x0 = (top + ratio // 2) // ratio, (left + ratio // 2) // ratio
    y1, x1 = (top + height + ratio // 2) // ratio, (left + width + ratio // 2) // ratio
    assert reduced.shape == (min(y1, -(-900 // ratio)) - y0, min(x1, -(-1200 // ratio)) - x0, 3)
    snapped = (y0 * ratio, x0 * ratio, min((y1 - y0) * ratio, 900 - y0 * ratio),
               min((x1 - x0) * ratio, 1200 - x0 * ratio))
    full = decode(lambda h, w: snapped).numpy()

    def resized(image):
        return tf.image.resize(tf.cast(image, tf.float32), (size, size)).numpy()

    difference = np.abs(resized(reduced) - resized(full))
    assert difference.mean() < 1.5 and difference.max() <= 9.0, (difference.mean(), difference.max())
    top, left, height, width = snapped
    ideal = np.asarray(
        Image.fromarray(array[top : top + height, left : left + width]).resize((size, size), Image.BILINEAR),
        np.float32,
    )
    if ratio > 1:
        assert np.abs(resized(reduced) - ideal).mean() < np.abs(resized(full) - ideal).mean()


def test_bgr_channel_order_reverses_the_normalised_channels():
    kwargs = dict(image_size=32, global_batch_size=8, crop_pct=1.0,
                  mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    rgb, _ = next(iter(data_lib.build_dataset("demo", "validation", **kwargs)))
    bgr, _ = next(iter(data_lib.build_dataset("demo", "validation", channel_order="bgr", **kwargs)))
    np.testing.assert_array_equal(bgr.numpy(), rgb.numpy()[..., ::-1])
    with pytest.raises(ValueError, match="channel_order='hsv'"):
        data_lib.build_dataset("demo", "validation", channel_order="hsv", **kwargs)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_eval_resize_computes_only_the_crop_like_a_full_resize(interpolation):
    """The eval path resizes only the pixels the centre crop keeps: the same
    pixels as TensorFlow's antialiased resize of the whole image, cropped
    (shrinking, slightly and fourfold, and enlarging)."""
    rng = np.random.default_rng(1)
    for height, width in ((375, 500), (900, 1200), (150, 200)):
        array = textured(int(rng.integers(100)), height, width)
        ours = transforms.eval_image(
            tf.constant(encode(array, "PNG")), image_size=64, crop_pct=0.8, interpolation=interpolation
        ).numpy().astype(np.float32)
        short = 80  # floor(64 / 0.8)
        new_h, new_w = (short, short * width // height) if height <= width else (short * height // width, short)
        full = tf.image.resize(array, (new_h, new_w), method=interpolation, antialias=True)
        full = transforms.to_uint8(full).numpy().astype(np.float32)
        top, left = round((new_h - 64) / 2), round((new_w - 64) / 2)
        difference = np.abs(ours - full[top : top + 64, left : left + 64])
        assert difference.max() <= 1.0 and difference.mean() < 0.05, (height, width)
