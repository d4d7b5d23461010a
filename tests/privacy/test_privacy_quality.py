from __future__ import annotations

import math

import numpy as np

from raysim.privacy.quality import image_quality, match_batch


def test_identical_images_have_infinite_psnr_and_unit_ssim():
    img = np.random.default_rng(0).random((1, 8, 8))
    psnr, ssim = image_quality(img, img.copy())
    assert math.isinf(psnr) and psnr > 0
    assert ssim == 1.0


def test_noise_lowers_both_and_rgb_works():
    rng = np.random.default_rng(1)
    img = rng.random((3, 28, 28))
    psnr, ssim = image_quality(img, img + rng.normal(0, 0.1, img.shape))
    assert 15 < psnr < 25 and 0 < ssim < 1


def test_match_batch_undoes_a_permutation():
    rng = np.random.default_rng(2)
    imgs = rng.random((3, 1, 8, 8))
    perm = match_batch(imgs, imgs[[2, 0, 1]])
    assert perm.tolist() == [1, 2, 0]
