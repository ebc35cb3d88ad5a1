"""preprocess_input / decode_predictions: keras.applications' conventions."""

import numpy as np
import pytest

import keras_senet
from keras_senet import imagenet


def test_class_names_are_keras_applications_names():
    names = imagenet.class_names()
    assert len(names) == 1000 and len(set(imagenet.wnids())) == 1000
    # Spot checks against keras.applications' imagenet_class_index.json.
    expected = {
        0: "tench",
        2: "great_white_shark",
        134: "crane",
        385: "Indian_elephant",
        517: "crane",
        607: "jack-o'-lantern",
        630: "Loafer",
        638: "maillot",
        639: "maillot",
        707: "pay-phone",
        986: "yellow_lady's_slipper",
        999: "toilet_tissue",
    }
    assert {i: names[i] for i in expected} == expected
    assert not any(" " in name for name in names)
    assert imagenet.class_descriptions()[0] == "tench, Tinca tinca"


def test_decode_predictions_returns_keras_names():
    preds = np.zeros((1, 1000), "float32")
    preds[0, 385] = 0.9
    preds[0, 386] = 0.1
    decoded = keras_senet.decode_predictions(preds, top=2)
    assert decoded == [
        [("n02504013", "Indian_elephant", pytest.approx(0.9)),
         ("n02504458", "African_elephant", pytest.approx(0.1))]
    ]


@pytest.mark.parametrize("top", [np.int64(3), np.int32(3), 3])
def test_decode_predictions_accepts_numpy_integers(top):
    preds = np.random.default_rng(0).random((2, 1000))
    decoded = keras_senet.decode_predictions(preds, top=top)
    assert [len(row) for row in decoded] == [3, 3]


@pytest.mark.parametrize("top", [True, False, np.bool_(True), 2.0, "3", 0, 1001, None])
def test_decode_predictions_refuses_bad_top(top):
    with pytest.raises(ValueError, match="`top` must be an integer.*Received: top="):
        keras_senet.decode_predictions(np.zeros((1, 1000)), top=top)


def test_preprocess_input_takes_nested_lists():
    image = [[[0.0, 127.5, 255.0]] * 2] * 2  # (2, 2, 3)
    out = keras_senet.preprocess_input(image)
    expected = keras_senet.preprocess_input(np.asarray(image, "float32"))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("x", [object(), "image", 3.0, [["a"]]])
def test_preprocess_input_refuses_non_images(x):
    with pytest.raises(ValueError, match="preprocess_input` expects"):
        keras_senet.preprocess_input(x)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(std=(0.2, 0.0, 0.2)), "`std` must hold 3 positive finite numbers"),
        (dict(std=(0.2, -1.0, 0.2)), "`std` must hold 3 positive finite"),
        (dict(std=(0.2, float("nan"), 0.2)), "`std` must hold 3 positive finite"),
        (dict(mean=(0.5, float("inf"), 0.5)), "`mean` must hold 3 finite"),
        (dict(mean=(0.5, 0.5)), "`mean` must hold 3 numbers"),
        (dict(std="abc"), "`std` must hold 3 numbers"),
    ],
)
def test_preprocess_input_refuses_bad_statistics(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        keras_senet.preprocess_input(np.zeros((1, 4, 4, 3)), **kwargs)
