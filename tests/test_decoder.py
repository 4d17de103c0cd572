import pytest
import torch
from torch import nn

from unikd.models.decoder import SECOND, SECONDFPN


def test_nuscenes_config_shapes_and_gradients():
    torch.manual_seed(0)
    backbone, neck = SECOND(), SECONDFPN()
    assert backbone.out_channels == (128, 256) and neck.out_channels == 512
    x = torch.randn(2, 256, 12, 20, requires_grad=True)
    levels = backbone(x)
    assert [tuple(level.shape) for level in levels] == [(2, 128, 12, 20), (2, 256, 6, 10)]
    out = neck(levels)
    assert out.shape == (2, 512, 12, 20)
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, param in [*backbone.named_parameters(), *neck.named_parameters()]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_other_strides():
    backbone = SECOND(in_channels=8, out_channels=(8, 16, 16), layer_nums=(1, 1, 1), layer_strides=(2, 2, 2))
    levels = backbone(torch.randn(1, 8, 32, 16))
    assert [tuple(level.shape[2:]) for level in levels] == [(16, 8), (8, 4), (4, 2)]
    neck = SECONDFPN(in_channels=(8, 16, 16), out_channels=(4, 4, 4), upsample_strides=(0.5, 1, 2))
    assert neck(levels).shape == (1, 12, 8, 4)


def uniform_positive_(module: nn.Module) -> None:
    """Every (transposed) conv averages its window with equal positive weights; BN stays identity."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
    module.eval()


@pytest.mark.parametrize(
    "height, width, row, col",
    [(48, 64, 21, 38), (48, 64, 30, 17), (47, 63, 40, 54), (47, 63, 6, 50)],
    ids=["even-a", "even-b", "odd-a", "odd-b"],
)
def test_feature_keeps_its_location(height, width, row, col):
    """Also on an odd grid, where the upsampled stride-2 level is cropped back to the first level's size."""
    backbone = SECOND(in_channels=4, out_channels=(4, 8), layer_nums=(5, 5), layer_strides=(1, 2))
    neck = SECONDFPN(in_channels=(4, 8), out_channels=(3, 5), upsample_strides=(1, 2))
    uniform_positive_(backbone)
    uniform_positive_(neck)
    x = torch.zeros(1, 4, height, width)  # H != W and row != col: a transpose would move the peak
    x[0, :, row, col] = 1.0
    with torch.no_grad():
        out = neck(backbone(x))
    assert out.shape == (1, 8, height, width)
    full_res, half_res = out[0, :3].sum(dim=0), out[0, 3:].sum(dim=0)
    assert divmod(int(full_res.argmax()), width) == (row, col)
    # The stride-2 level is blocky after upsampling: the input cell must be among its maxima.
    assert half_res[row, col] == pytest.approx(float(half_res.max()))
    rows, cols = torch.nonzero(half_res >= half_res.max() * (1 - 1e-6), as_tuple=True)
    assert abs(rows.float().mean() - row) <= 1 and abs(cols.float().mean() - col) <= 1
    if row % 2 == 0 and col % 2 == 0:  # stride-2 cell (row/2, col/2) is centred on the input cell
        assert set(rows.tolist()) == {row, row + 1} and set(cols.tolist()) == {col, col + 1}


def test_errors():
    with pytest.raises(ValueError, match="one entry per stage"):
        SECOND(out_channels=(128,), layer_nums=(5, 5))
    with pytest.raises(ValueError, match="expects"):
        SECOND()(torch.zeros(1, 64, 8, 8))
    backbone = SECOND(in_channels=4, out_channels=(4, 4), layer_nums=(0, 0))
    neck = SECONDFPN(in_channels=(4, 4), out_channels=(2, 2))
    assert neck(backbone(torch.zeros(1, 4, 9, 7))).shape == (1, 4, 9, 7)  # 9 -> 5 -> 10, cropped to 9
    with pytest.raises(ValueError, match="do not align"):
        neck([torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="levels"):
        neck([torch.zeros(1, 4, 8, 8)])
