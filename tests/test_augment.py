"""On-device training augmentation (dfkd_jax.data.augment)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfkd_jax.data import augment


def _images(n=16, h=8, w=8, c=3):
  return jax.random.uniform(jax.random.key(0), (n, h, w, c))


@pytest.mark.parametrize("padding, flip", [(0, False), (0, True), (4, False), (2, True)])
def test_shape_and_dtype_are_kept(padding, flip):
  images = _images()
  out = augment.crop_and_flip(jax.random.key(1), images, padding=padding, flip=flip)
  assert out.shape == images.shape and out.dtype == images.dtype


def test_no_padding_and_no_flip_is_the_identity():
  images = _images()
  out = augment.crop_and_flip(jax.random.key(1), images, padding=0, flip=False)
  np.testing.assert_array_equal(out, images)


def test_same_key_same_batch_other_key_other_batch():
  images = _images(n=32)
  run = jax.jit(lambda key: augment.crop_and_flip(key, images, padding=4, flip=True))
  a, again, b = run(jax.random.key(3)), run(jax.random.key(3)), run(jax.random.key(4))
  np.testing.assert_array_equal(a, again)
  assert not np.array_equal(a, b)


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
  images = _images(n=256)
  out = np.asarray(augment.crop_and_flip(jax.random.key(5), images, padding=0,
                                         flip=True))
  images = np.asarray(images)
  same = np.all(out == images, axis=(1, 2, 3))
  mirrored = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored)
  assert 0.35 < mirrored.mean() < 0.65


def test_crop_moves_each_image_by_at_most_the_padding_and_pads_with_the_value():
  n, padding = 200, 4
  images = jnp.zeros((n, 32, 32, 2)).at[:, 16, 16, :].set(1.0)
  out = np.asarray(augment.crop_and_flip(jax.random.key(6), images, padding=padding,
                                         flip=False, pad_value=(-2.0, -3.0)))
  shifts = set()
  for image in out:
    y, x = np.argwhere(image[:, :, 0] == 1.0)[0]
    assert abs(y - 16) <= padding and abs(x - 16) <= padding
    shifts.add((y - 16, x - 16))
    # Rows/columns shifted in from outside the image hold the pad value per channel.
    dy, dx = 16 - y, 16 - x
    if dy < 0:
      np.testing.assert_array_equal(image[:-dy, :, 0], -2.0)
      np.testing.assert_array_equal(image[:-dy, :, 1], -3.0)
    if dx > 0:
      np.testing.assert_array_equal(image[:, 32 - dx:, 1], -3.0)
  assert len(shifts) > 40  # 81 possible offsets, drawn per image.


def test_black_level_is_the_normalised_zero():
  assert augment.black_level((0.5, 0.25), (0.5, 0.125)) == (-1.0, -2.0)


def test_negative_padding_is_refused():
  with pytest.raises(ValueError, match="padding=-1 must be >= 0"):
    augment.crop_and_flip(jax.random.key(0), _images(), padding=-1, flip=False)
