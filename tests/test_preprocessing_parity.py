"""Our eval transform + `preprocess_input` against timm's reference
preprocessing for the published weights (resize the shorter side to
size / crop_pct with antialiased bilinear, centre crop, normalise)."""

import io

import numpy as np
import pytest

timm = pytest.importorskip("timm")
Image = pytest.importorskip("PIL.Image")

import tensorflow as tf  # noqa: E402

import keras_senet  # noqa: E402
from keras_senet import zoo  # noqa: E402
from training import transforms  # noqa: E402

# Tolerances in grey levels (0-255). TF's and PIL's antialiased filters are
# the same (triangle; Keys cubic with a=-0.5) but PIL computes in fixed point
# and rounds to 8 bits between its horizontal and vertical passes. Bilinear:
# at most 2 levels anywhere. Bicubic rings at the test image's hard 255 -> 0
# steps, and that ringing is clipped at different stages, so a few pixels
# there differ by more: bound the mean and the 99.9th percentile instead.
TOLERANCE = {
    "bilinear": dict(max=2.0, p999=2.0, mean=0.5),
    "bicubic": dict(max=16.0, p999=5.0, mean=0.5),
}


def _image(width, height, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack(
        [128 + 100 * np.sin(xx / 17.0), 128 + 100 * np.cos(yy / 23.0), (xx + yy) % 256],
        axis=-1,
    )
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


# Sizes where truncating vs rounding the long side, and rounding the crop
# offset, make a difference (e.g. 640x481 -> 340.6, 257x300 -> 298.8); one
# smaller than the crop (upscaled) and one shrunk fourfold.
SIZES = [(500, 375), (375, 500), (333, 500), (640, 481), (257, 300), (481, 640), (200, 150), (1024, 768)]


@pytest.mark.parametrize("name", ["se_resnet50", "se_resnet18"])
def test_eval_transform_and_preprocess_input_equal_timm(name):
    info = zoo.REGISTRY[name]
    config = timm.data.resolve_data_config(
        {}, model=timm.create_model("legacy_" + name.replace("se_", "se"))
    )
    assert config["crop_pct"] == info.crop_pct
    assert config["interpolation"] == info.interpolation
    assert tuple(config["mean"]) == info.mean and tuple(config["std"]) == info.std
    reference = timm.data.create_transform(**config)
    std = np.array(info.std, "float32")
    for i, (w, h) in enumerate(SIZES):
        img = _image(w, h, i)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")  # lossless: same pixels
        want = reference(Image.fromarray(img)).numpy().transpose(1, 2, 0)
        ours = transforms.eval_image(
            tf.constant(buf.getvalue()),
            image_size=info.input_size,
            crop_pct=info.crop_pct,
            interpolation=info.interpolation,
        )
        got = keras_senet.preprocess_input(np.asarray(ours)[None])[0]
        levels = np.abs(got - want) * std * 255.0  # back to grey levels
        tol = TOLERANCE[info.interpolation]
        assert levels.max() <= tol["max"], (w, h, levels.max())
        assert np.percentile(levels, 99.9) <= tol["p999"], (w, h)
        assert levels.mean() <= tol["mean"], (w, h, levels.mean())
