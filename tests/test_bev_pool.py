import pytest
import torch

from unikd.ops.bev_pool import bev_pool, flat_cell_index


def naive_bev_pool(
    features: torch.Tensor, coords: torch.Tensor, batch: int, height: int, width: int
) -> torch.Tensor:
    out = torch.zeros(batch, features.shape[1], height, width, dtype=features.dtype)
    for p in range(features.shape[0]):
        b, row, col = (int(c) for c in coords[p])
        out[b, :, row, col] = out[b, :, row, col] + features[p]
    return out


def random_points(num: int, batch: int, height: int, width: int, channels: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    coords = torch.stack(
        [
            torch.randint(0, batch, (num,), generator=generator),
            torch.randint(0, height, (num,), generator=generator),
            torch.randint(0, width, (num,), generator=generator),
        ],
        dim=1,
    )
    coords[: num // 4] = coords[0]  # a quarter of the points share one cell
    features = torch.randn(num, channels, generator=generator, dtype=torch.float64)
    return features, coords


@pytest.mark.parametrize("flat", [False, True])
def test_bev_pool_matches_naive_loop_forward_and_backward(flat):
    batch, height, width, channels = 3, 5, 7, 4  # H != W: a row/col swap cannot pass
    features, coords = random_points(300, batch, height, width, channels, seed=0)
    weight = torch.randn(batch, channels, height, width, dtype=torch.float64)

    ours = features.clone().requires_grad_(True)
    index = flat_cell_index(coords, height, width) if flat else coords
    out = bev_pool(ours, index, batch, height, width)
    (out * weight).sum().backward()

    reference = features.clone().requires_grad_(True)
    expected = naive_bev_pool(reference, coords, batch, height, width)
    (expected * weight).sum().backward()

    assert out.shape == (batch, channels, height, width)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours.grad, reference.grad, rtol=0, atol=0)


def test_bev_pool_layout_rows_are_y_columns_are_x():
    features = torch.tensor([[1.0], [2.0], [4.0]])
    coords = torch.tensor([[0, 1, 3], [1, 2, 0], [1, 2, 0]])
    out = bev_pool(features, coords, batch_size=2, height=3, width=4)
    assert out[0, 0, 1, 3] == 1.0 and out[1, 0, 2, 0] == 6.0
    assert out.sum() == 7.0


def test_bev_pool_gradcheck_and_empty_input():
    features, coords = random_points(20, 2, 3, 4, 2, seed=1)
    features.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: bev_pool(f, coords, 2, 3, 4), (features,))
    empty = bev_pool(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), 2, 3, 4)
    assert empty.shape == (2, 3, 3, 4) and not empty.any()


def test_bev_pool_half_precision_accumulates_in_float32():
    features = torch.full((4096, 1), 0.1, dtype=torch.bfloat16)
    coords = torch.zeros(4096, 3, dtype=torch.long)
    out = bev_pool(features, coords, 1, 1, 1)
    assert out.dtype == torch.bfloat16
    assert abs(float(out) - 4096 * float(features[0, 0])) < 4.0  # a bf16 running sum stalls near 32


@pytest.mark.parametrize(
    "coords",
    [
        torch.tensor([[0, 0, 4]]),  # col == width
        torch.tensor([[0, 3, 0]]),  # row == height
        torch.tensor([[2, 0, 0]]),  # batch == batch_size
        torch.tensor([[0, -1, 0]]),
        torch.tensor([24]),  # flat index == B*H*W
    ],
)
def test_bev_pool_rejects_points_outside_the_grid(coords):
    with pytest.raises(ValueError, match="outside"):
        bev_pool(torch.ones(1, 2), coords, batch_size=2, height=3, width=4)
