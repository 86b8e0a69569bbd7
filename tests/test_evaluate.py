"""Evaluation helpers: the Frechet distance and the sample-fidelity score."""

import torch


def test_frechet_distance_matches_closed_forms():
    from vaelab.evaluation.frechet import frechet_distance

    m = torch.tensor([1.0, -2.0, 0.5])
    c = torch.diag(torch.tensor([1.0, 4.0, 0.25]))
    assert abs(frechet_distance(m, c, m, c)) < 1e-9
    # diagonal covariances: |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    m2, c2 = torch.zeros(3), torch.diag(torch.tensor([9.0, 1.0, 1.0]))
    expected = (m - m2).pow(2).sum() + (torch.tensor([1.0, 2.0, 0.5]) - torch.tensor([3.0, 1.0, 1.0])).pow(2).sum()
    assert abs(frechet_distance(m, c, m2, c2) - float(expected)) < 1e-6
    # a full covariance and a rotation of it: the same spectrum, so only the (commuting-free) formula
    # gives the right answer; symmetric in its arguments
    a = torch.tensor([[2.0, 0.8], [0.8, 1.0]])
    rot = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    b = rot @ a @ rot.T
    d_ab, d_ba = frechet_distance(torch.zeros(2), a, torch.zeros(2), b), frechet_distance(torch.zeros(2), b, torch.zeros(2), a)
    ra = torch.linalg.eigh(a)
    root_a = ra.eigenvectors @ torch.diag(ra.eigenvalues.sqrt()) @ ra.eigenvectors.T
    inner = torch.linalg.eigvalsh(root_a @ b @ root_a).sqrt().sum()
    assert abs(d_ab - float(torch.trace(a) + torch.trace(b) - 2 * inner)) < 1e-6 and abs(d_ab - d_ba) < 1e-6
    assert d_ab > 0.1


def test_sample_fidelity_ranks_a_good_generator_above_noise():
    from vaelab.data import DatasetSplits, ImageSet
    from vaelab.evaluation.frechet import sample_fidelity

    g = torch.Generator().manual_seed(0)
    # "data": blurry blobs at random places
    def blobs(n):
        x = torch.zeros(n, 1, 12, 12)
        centres = torch.randint(2, 10, (n, 2), generator=g)
        for i, (r, c) in enumerate(centres.tolist()):
            x[i, 0, r - 2:r + 2, c - 2:c + 2] = 1.0
        return (x * 255).to(torch.uint8)

    splits = DatasetSplits("blobs", ImageSet(blobs(800), torch.zeros(800, dtype=torch.long)),
                           ImageSet(blobs(10), torch.zeros(10, dtype=torch.long)),
                           ImageSet(blobs(800), torch.zeros(800, dtype=torch.long)), "test")

    class Fake(torch.nn.Module):
        def __init__(self, noise):
            super().__init__()
            self.noise, self.w = noise, torch.nn.Parameter(torch.zeros(1))

        def sample_images(self, n, temperature, generator):  # the one Model method sampling calls
            z = torch.randn(n, 2, generator=generator)
            return torch.rand(len(z), 1, 12, 12, generator=g) if self.noise else blobs(len(z)).float() / 255

    good = sample_fidelity(Fake(False), splits, n=800, dims=16)
    bad = sample_fidelity(Fake(True), splits, n=800, dims=16)
    assert good["images"] == 800 and good["pca_dims"] == 16
    assert good["fd_samples_test"] < 2 * good["fd_train_test"] + 0.5 < bad["fd_samples_test"]
