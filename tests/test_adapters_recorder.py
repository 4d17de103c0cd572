import pytest
import torch
from torch import nn

from unikd.distill.adapters import Resize, build_adapter
from unikd.distill.recorder import FeatureRecorder


def test_adapter_kind_follows_shapes():
    assert isinstance(build_adapter((64, 32, 32), (64, 32, 32)), nn.Identity)
    conv = build_adapter((32, 16, 16), (64, 16, 16))
    assert (
        isinstance(conv[0], nn.Conv2d)
        and conv[0].kernel_size == (1, 1)
        and isinstance(conv[1], nn.BatchNorm2d)
    )
    assert isinstance(build_adapter((64, 8, 10), (64, 16, 20)), Resize)
    both = build_adapter((32, 8, 10), (64, 16, 20))
    assert isinstance(both[0][0], nn.Conv2d) and isinstance(both[1], Resize)
    assert both(torch.randn(2, 32, 8, 10)).shape == (2, 64, 16, 20)
    assert isinstance(build_adapter((64, 8, 8), (64, 8, 8), override="conv")[0], nn.Conv2d)


def test_adapter_rejects_impossible_shapes():
    with pytest.raises(ValueError, match=r"\(32, 8, 10\).*\(64, 16, 16\)"):
        build_adapter((32, 8, 10), (64, 16, 16))
    with pytest.raises(ValueError, match="cannot map"):
        build_adapter((32, 8, 8), (64, 8, 8), override="identity")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_adapter((2, 32, 8, 8), (32, 8, 8))


def test_resize_keeps_cell_centres_metric():
    columns = torch.arange(8.0)  # a field linear in x at 8 columns; 4 coarse columns cover pairs
    fine = columns.view(1, 1, 1, 8).expand(1, 1, 4, 8)
    coarse = Resize((2, 4))(fine)
    assert torch.allclose(coarse[0, 0, 0], torch.tensor([0.5, 2.5, 4.5, 6.5]))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))


def test_recorder_records_outputs_by_path():
    model = Tiny()
    x = torch.randn(2, 3, 5, 5)
    with FeatureRecorder(model, ["stem", "blocks.1"]) as recorder:
        out = model(x)
        stem = model.stem(x)
        assert torch.allclose(recorder["stem"], stem)
        assert torch.allclose(recorder["blocks.1"], out)
        assert recorder["blocks.1"].requires_grad
    model(torch.randn(2, 3, 5, 5))  # hooks are gone: nothing changes
    assert torch.allclose(recorder["stem"], stem)


def test_recorder_rejects_unknown_paths():
    with pytest.raises(KeyError, match="blocks.1"):
        FeatureRecorder(Tiny(), ["blocks.l"])
    recorder = FeatureRecorder(Tiny(), ["stem"])
    with pytest.raises(KeyError, match="nothing recorded"):
        recorder["stem"]
    recorder.remove()
