"""The orientation test (vaelab.evaluation.orientation): the grid's symmetries, the preferences with common
random numbers and the validation-only choice of transforms (the tail p-values: tests/test_tails.py)."""

import numpy as np
import torch

from vaelab.evaluation import orientation as ori


def _asymmetric(h=5, w=5):
    return torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)


def test_square_grids_get_the_seven_other_elements_of_the_dihedral_group():
    x = _asymmetric()
    names = ori.grid_symmetries(tuple(x.shape))
    assert len(names) == 7
    images = [x] + [ori.SYMMETRIES[n](x) for n in names]
    keys = {tuple(im.flatten().tolist()) for im in images}
    assert len(keys) == 8  # all distinct: none is the identity, none repeats another
    for a in names:  # closed under composition: a group of eight
        for b in names:
            assert tuple(ori.SYMMETRIES[a](ori.SYMMETRIES[b](x)).flatten().tolist()) in keys
    rect = _asymmetric(4, 6)
    assert ori.grid_symmetries(tuple(rect.shape)) == ("hflip", "vflip", "rot180")
    assert all(ori.SYMMETRIES[n](rect).shape == rect.shape for n in ori.RECTANGLE)


class _TopHeavy:
    """A stand-in model whose ELBO rewards bright top rows, plus noise drawn from the generator."""

    variational = True

    def log_weights(self, x, s, generator=None):
        rows = torch.linspace(1.0, -1.0, x.shape[-2]).view(1, 1, -1, 1)
        score = (x.float() * rows).flatten(1).sum(1)
        return score + 50.0 * torch.randn(s, x.shape[0], generator=generator)

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    training = False


def test_preferences_share_their_draws_and_point_the_right_way():
    top = torch.zeros(2, 1, 6, 6)
    top[:, :, :2] = 1.0  # bright on top: the model's favourite way up
    flat = torch.full((2, 1, 6, 6), 0.5)  # every symmetry leaves it as it is
    prefs = ori.preference_statistics(_TopHeavy(), torch.cat([top, flat]), samples=4, seed=3, batch_size=4)
    assert set(prefs) == {ori.PREFIX + n for n in ori.SYMMETRIES}
    # the same draws for x and T x: the noise (sd 50 per draw) cancels exactly where T x == x
    assert all(np.array_equal(v[2:], np.zeros(2)) for v in prefs.values())
    assert (prefs["prefer_vflip"][:2] > 0).all() and (prefs["prefer_rot180"][:2] > 0).all()
    assert np.allclose(prefs["prefer_hflip"][:2], 0)  # mirroring left-right keeps the rows
    upside_down = ori.preference_statistics(_TopHeavy(), top.flip(-2), samples=4, seed=3, batch_size=4)
    assert (upside_down["prefer_vflip"] < 0).all()  # it prefers its own flip: the orientation test's signal


def test_transforms_are_kept_when_the_model_resists_them_on_validation_images():
    rng = np.random.default_rng(0)
    columns = {"prefer_vflip": rng.normal(30, 10, 1000),  # preferred in ~99.9%
               "prefer_hflip": rng.normal(5, 10, 1000),  # ~69%: the data is nearly mirror-symmetric
               "recon": rng.normal(0, 1, 1000)}
    assert ori.orientation_transforms(columns) == ("prefer_vflip",)
    assert ori.orientation_transforms({"recon": columns["recon"]}) == ()
    stat = ori.orientation_statistic(columns, ("prefer_vflip", "prefer_hflip"))
    assert np.array_equal(stat, np.minimum(columns["prefer_vflip"], columns["prefer_hflip"]))


def test_the_density_gets_the_orientation_statistic_as_one_more_column():
    from vaelab.evaluation.oodrun import ORIENTATION, with_orientation
    from vaelab.evaluation.statistics import ImageStatistics

    rng = np.random.default_rng(0)
    cols = {"elbo": rng.normal(size=6), "prefer_vflip": rng.normal(size=6), "prefer_rot90": rng.normal(size=6),
            "prefer_hflip": rng.normal(size=6)}
    stats = ImageStatistics("val", cols, {"k": 10})
    moved = with_orientation(stats, ("prefer_vflip", "prefer_rot90"))
    expected = np.minimum(cols["prefer_vflip"], cols["prefer_rot90"])  # hflip is not one of the transforms
    assert np.array_equal(moved.columns[ORIENTATION], expected)
    assert moved.features() == ("elbo", ORIENTATION) and moved.protocol == stats.protocol
    assert stats.features() == ("elbo",)  # the original is left as it was
    assert with_orientation(stats, ()) is stats  # no transform the model resists: the density alone
