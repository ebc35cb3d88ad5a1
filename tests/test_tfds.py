"""The TFDS path of the input pipeline, with TFDS's own mock data.

Needs only the package's runtime dependencies (no PIL, torch or timm), so
that it also runs in an environment with nothing else installed: that is
where a dependency TFDS imports without declaring it shows up.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_senet.imagenet import wnids
from training import data as data_lib

pytestmark = pytest.mark.runtime


def test_mock_imagenet_through_build_dataset_end_to_end():
    with tfds.testing.mock_data(num_examples=6):
        info = data_lib.describe("imagenet2012")
        assert info.num_classes == 1000 and list(info.class_names) == wnids()
        images, labels = [], []
        for x, y in data_lib.build_dataset("imagenet2012", "validation", image_size=16, global_batch_size=4):
            images.append(x.numpy())
            labels.append(y.numpy())
        images, labels = np.concatenate(images), np.concatenate(labels)
        assert images.shape == (6, 16, 16, 3) and labels.dtype == np.int32
        assert ((labels >= 0) & (labels < 1000)).all()
        # Random pixels normalised: spread over the range, not constant.
        assert images.std() > 0.5 and np.isfinite(images).all()
        train = data_lib.build_dataset("tfds:imagenet2012", "train", image_size=16, global_batch_size=4)
        x, y = next(iter(train))
        assert x.shape == (4, 16, 16, 3) and np.isfinite(x.numpy()).all()


def test_unprepared_imagenet_says_where_the_archives_go(tmp_path):
    for call in (
        lambda: data_lib.describe("imagenet2012", data_dir=str(tmp_path)),
        lambda: data_lib.build_dataset(
            "imagenet2012", "train", image_size=16, global_batch_size=4, data_dir=str(tmp_path)
        ),
    ):
        with pytest.raises(ValueError) as raised:
            call()
        message = str(raised.value)
        assert "'imagenet2012' is not prepared" in message
        assert str(tmp_path / "downloads" / "manual") in message
        assert "ILSVRC2012_img_train.tar" in message
        assert f"tfds build imagenet2012 --data_dir {tmp_path}" in message
    assert not (tmp_path / "downloads").exists()  # nothing fetched or made


def test_unknown_tfds_name_is_a_value_error():
    with pytest.raises(ValueError, match="no_such_dataset_xyz"):
        data_lib.describe("no_such_dataset_xyz")
