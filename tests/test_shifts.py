import pytest
import torch

from vaelab.data import shifts
from vaelab.errors import DataError

SHAPE = (1, 12, 10)


def _reference(n=50, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name", list(shifts.SHIFTS))
@pytest.mark.parametrize("shape", [SHAPE, (3, 6, 7)])
def test_shape_dtype_and_determinism(name, shape):
    ref = _reference(shape=shape)
    a = shifts.make_shift(name, ref, 20, seed=3)
    assert a.dtype == torch.uint8 and a.shape == (20, *shape)
    assert torch.equal(a, shifts.make_shift(name, ref, 20, seed=3))
    assert not torch.equal(a, shifts.make_shift(name, ref, 20, seed=4))


def test_fewer_reference_images_than_asked_uses_them_all():
    ref = _reference(n=7)
    assert torch.equal(shifts.make_shift("inverted", ref, 20, seed=0), 255 - ref)
    assert torch.equal(shifts.make_shift("flipped", ref, 7, seed=1), ref.flip(2))
    assert shifts.make_shift("noise", ref, 20, seed=0).shape == (20, *SHAPE)


def test_transforms_use_a_subset_of_the_reference():
    ref = _reference(n=50)
    out = shifts.make_shift("inverted", ref, 10, seed=0)
    back = 255 - out
    assert all(any(torch.equal(img, r) for r in ref) for img in back)
    assert len({img.numpy().tobytes() for img in back}) == 10  # drawn without replacement


def test_inverted_and_flipped_are_involutions():
    ref = _reference(shape=(3, 5, 9))
    inv = shifts.inverted(ref)
    assert torch.equal(shifts.inverted(inv), ref)
    assert torch.equal(inv.int() + ref.int(), torch.full(ref.shape, 255))
    flip = shifts.flipped(ref)
    assert torch.equal(shifts.flipped(flip), ref)
    assert torch.equal(flip[:, :, 0], ref[:, :, -1])  # upside down: first row is the last
    assert torch.equal(flip[:, :, :, 0], ref.flip(2)[:, :, :, 0]) and not torch.equal(flip, ref)


def test_constant_images_are_constant():
    x = shifts.constant_images(300, (3, 4, 5), seed=0)
    flat = x.flatten(1)
    assert torch.equal(flat, flat[:, :1].expand_as(flat))  # all pixels and channels equal
    levels = flat[:, 0].int()
    assert levels.min() >= 0 and levels.max() <= 255
    assert len(levels.unique()) > 100  # levels spread over 0..255
    assert x.is_contiguous()


def test_uniform_noise_values():
    x = shifts.uniform_noise(200, (1, 28, 28), seed=0)
    assert x.dtype == torch.uint8 and x.shape == (200, 1, 28, 28)
    assert x.min() == 0 and x.max() == 255
    assert x.float().mean().item() == pytest.approx(127.5, abs=1.0)
    assert torch.equal(x, shifts.uniform_noise(200, (1, 28, 28), seed=0))


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(DataError, match="noise, constant, inverted, flipped"):
        shifts.make_shift("rotated", _reference(), 5, seed=0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        shifts.make_shift("noise", torch.zeros(3, 1, 4, 4), 5, seed=0)
    with pytest.raises(DataError, match="empty"):
        shifts.make_shift("flipped", torch.zeros(0, 1, 4, 4, dtype=torch.uint8), 5, seed=0)
    with pytest.raises(DataError):
        shifts.make_shift("noise", _reference(), -1, seed=0)
    with pytest.raises(ValueError):
        shifts.uniform_noise(3, (28, 28), seed=0)
