"""`lsmerge.merge.latent.depth`: the depth map between models of different depth, token resampling, latent-dim matching and projection."""

from __future__ import annotations

import pytest
import torch

from conftest import gaussian_cloud
from lsmerge.errors import LsMergeError

from lsmerge.merge.latent.depth import depth_map, match_latent_dim, project_latent_set, resample_tokens


def test_depth_map_by_relative_depth():
    assert depth_map(4, 2) == [[0, 1], [2, 3]]
    assert depth_map(2, 4) == [[0], [0], [1], [1]]
    assert depth_map(3, 3) == [[0], [1], [2]]
    groups = depth_map(30, 18)  # SmolLM2 -> Gemma-3
    assert sorted(s for g in groups for s in g) == list(range(30)) and all(1 <= len(g) <= 2 for g in groups)
    assert groups[0][0] == 0 and groups[-1][-1] == 29
    with pytest.raises(LsMergeError):
        depth_map(0, 3)


def test_token_resampling_and_dim_matching():
    z = torch.arange(12.0).view(6, 2)
    assert torch.equal(resample_tokens(z, 6), z)
    up = resample_tokens(z, 11)
    assert up.shape == (11, 2) and torch.equal(up[0], z[0]) and torch.equal(up[-1], z[-1])
    torch.testing.assert_close(up[1], (z[0] + z[1]) / 2)  # linear between neighbours
    assert resample_tokens(z, 3).shape == (3, 2)
    assert torch.equal(match_latent_dim(z, 1, "truncate"), z[:, :1])
    assert torch.equal(match_latent_dim(z, 4, "truncate")[:, 2:], torch.zeros(6, 2))
    # pca: the projection keeps the directions of largest spread
    cloud = gaussian_cloud(300, 5, 8).float() * torch.tensor([5.0, 0.1, 0.1, 0.1, 0.1])
    proj = match_latent_dim(cloud, 1, "pca")
    assert proj.var() > 0.9 * cloud.var(0).sum()
    out = project_latent_set([gaussian_cloud(40, 5, 9).float(), gaussian_cloud(30, 5, 10).float()], 25, 3)
    assert out.shape == (25, 3)
