"""TransFusionHead: query initialisation, Hungarian assignment, box coding, the layout of decoded boxes,
training, the detector and distillation with it, and parity with mmdet3d's own head."""

import itertools
import math
from pathlib import Path

import pytest
import torch
from parity import assert_close

from unikd.data.classes import CLASSES, HEAD_CLASS_GROUPS
from unikd.distill.distiller import Distiller
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config
from unikd.models.heads.transfusion_assigner import HungarianAssigner, iou_3d
from unikd.models.heads.transfusion_head import HEATMAP_CLASSES, TransFusionHead, initial_queries, local_peaks
from unikd.ops.bev_grid import BEVGrid

FIXTURE = Path(__file__).parent / "fixtures" / "bevfusion" / "transfusion_parity.pt"
GRID = BEVGrid(-16.0, -12.0, 16.0, 12.0, height=24, width=32)  # 1 m cells, more columns (x) than rows (y)
TINY = {"hidden_channels": 16, "num_heads": 2, "ffn_channels": 32, "head_conv": 16, "num_proposals": 20}
PEDESTRIAN, TRAFFIC_CONE = (
    HEATMAP_CLASSES.index("pedestrian"),
    HEATMAP_CLASSES.index("traffic_cone"),
)  # channels


def naive_peaks(probs: torch.Tensor, kernel: int, single_cell: tuple[int, ...]) -> torch.Tensor:
    """Cells no smaller than every cell of their window inside the grid (kernel 1 for `single_cell`), else 0."""
    batch, classes, height, width = probs.shape
    out = torch.zeros_like(probs)
    for b, k, row, col in itertools.product(range(batch), range(classes), range(height), range(width)):
        pad = 0 if k in single_cell else kernel // 2
        if not (pad <= row < height - pad and pad <= col < width - pad):
            continue
        window = probs[b, k, row - pad : row + pad + 1, col - pad : col + pad + 1]
        if probs[b, k, row, col] >= window.max():
            out[b, k, row, col] = probs[b, k, row, col]
    return out


@pytest.mark.parametrize("kernel", [1, 3, 5])
def test_local_peaks_and_queries_match_a_naive_loop(kernel: int) -> None:
    generator = torch.Generator().manual_seed(kernel)
    plateaus = (
        torch.randint(0, 4, (2, 10, 7, 9), generator=generator) / 4.0
    )  # ties: equal neighbours are both peaks
    assert torch.equal(
        local_peaks(plateaus, kernel, (PEDESTRIAN, TRAFFIC_CONE)), naive_peaks(plateaus, kernel, (8, 9))
    )

    probs = torch.rand(2, 10, 7, 9, generator=generator)
    expected = naive_peaks(probs, kernel, (PEDESTRIAN, TRAFFIC_CONE))
    scores, labels, cells = initial_queries(probs, 12, kernel, (PEDESTRIAN, TRAFFIC_CONE))
    for b in range(2):
        found = sorted(
            (
                (expected[b, k, r, c].item(), k, r * 9 + c)
                for k, r, c in itertools.product(range(10), range(7), range(9))
            ),
            reverse=True,
        )[:12]
        assert [(k, cell) for _, k, cell in found] == list(
            zip(labels[b].tolist(), cells[b].tolist(), strict=True)
        )
        torch.testing.assert_close(scores[b], torch.tensor([value for value, _, _ in found]))


def axis_aligned_iou(a: list[float], b: list[float]) -> float:
    """3D IoU of two yaw-0 boxes (x, y, z, l, w, h) from their interval overlaps."""
    overlap = 1.0
    for axis, size in ((0, 3), (1, 4), (2, 5)):
        low = max(a[axis] - a[size] / 2, b[axis] - b[size] / 2)
        high = min(a[axis] + a[size] / 2, b[axis] + b[size] / 2)
        overlap *= max(0.0, high - low)
    return overlap / (a[3] * a[4] * a[5] + b[3] * b[4] * b[5] - overlap)


def test_hungarian_assignment_is_the_brute_force_optimum() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 10, generator=generator)
    pred = torch.cat(
        [
            torch.rand(5, 3, generator=generator) * 4,
            1 + torch.rand(5, 3, generator=generator) * 3,
            torch.zeros(5, 3),
        ],
        1,
    )
    gt = torch.cat(
        [
            torch.rand(3, 3, generator=generator) * 4,
            1 + torch.rand(3, 3, generator=generator) * 3,
            torch.zeros(3, 3),
        ],
        1,
    )
    labels = torch.tensor([2, 0, 7])
    assigner = HungarianAssigner(GRID)

    expected = torch.zeros(5, 3, dtype=torch.float64)
    for i, j in itertools.product(range(5), range(3)):
        p = 1 / (1 + math.exp(-logits[i, labels[j]].item()))
        focal = 0.25 * (1 - p) ** 2 * -math.log(p) - 0.75 * p**2 * -math.log(1 - p)
        distance = abs(pred[i, 0] - gt[j, 0]).item() / 32 + abs(pred[i, 1] - gt[j, 1]).item() / 24
        iou = axis_aligned_iou(pred[i].tolist(), gt[j].tolist())
        expected[i, j] = 0.15 * focal + 0.25 * distance - 0.25 * iou
    cost = assigner.cost(logits, pred, gt, labels)
    torch.testing.assert_close(cost.double(), expected, atol=1e-5, rtol=1e-5)
    assert (expected[:, :] < 0).any()  # the IoU term matters somewhere

    best = min(
        itertools.permutations(range(5), 3), key=lambda rows: sum(expected[r, j] for j, r in enumerate(rows))
    )
    assigned = assigner.assign(logits, pred, gt, labels)
    assert [assigned.tolist().index(j) for j in range(3)] == list(best)
    assert (assigned == -1).sum() == 2
    assert torch.equal(assigner.assign(logits, pred, gt[:0], labels[:0]), torch.full((5,), -1))


def test_iou_3d_of_rotated_boxes() -> None:
    box = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, 0.0]])
    turned = torch.tensor([[1.0, 2.0, 0.0, 2.0, 4.0, 2.0, math.pi / 2]])  # the same footprint, z in [-1, 1]
    torch.testing.assert_close(iou_3d(box, turned), torch.tensor([[8.0 / (8.0 + 16.0 - 8.0)]]))
    diagonal = torch.tensor(
        [[1.0, 2.0, 0.5, 2.0, 2.0, 1.0, math.pi / 4]]
    )  # a square turned 45 deg in a 4 x 2 box
    overlap = 4.0 - 2 * (math.sqrt(2) - 1) ** 2  # the square minus its two corners beyond y = 2 +- 1
    torch.testing.assert_close(iou_3d(box, diagonal), torch.tensor([[overlap / (8.0 + 4.0 - overlap)]]))


def test_box_code_round_trip() -> None:
    head = TransFusionHead(4, grid=GRID, **TINY)
    generator = torch.Generator().manual_seed(0)
    boxes = torch.cat(
        [
            torch.rand(6, 2, generator=generator) * 20 - 10,
            torch.randn(6, 1, generator=generator),
            0.5 + torch.rand(6, 3, generator=generator) * 4,
            (torch.rand(6, 1, generator=generator) * 2 - 1) * math.pi,
            torch.randn(6, 2, generator=generator),
        ],
        dim=1,
    )
    codes = head.encode(boxes)
    torch.testing.assert_close(codes[:, :2], (boxes[:, :2] - torch.tensor([-16.0, -12.0])) / 1.0)
    layer = {
        name: codes.T[None, part]
        for name, part in (
            ("center", slice(0, 2)),
            ("height", slice(2, 3)),
            ("dim", slice(3, 6)),
            ("rot", slice(6, 8)),
            ("vel", slice(8, 10)),
        )
    }
    torch.testing.assert_close(head.query_boxes(layer)[0], boxes)


class FixedLogits(torch.nn.Module):
    """Stands in for the dense heatmap convolutions: the same logits [1, K, H, W] for any input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, -1, -1)


def test_queries_start_at_their_peaks_and_decode_there() -> None:
    torch.manual_seed(0)
    head = TransFusionHead(4, grid=GRID, **{**TINY, "num_proposals": 2}).eval()
    logits = torch.full((1, 10, 24, 32), -5.0)
    logits[0, 0, 2, 10] = 5.0  # a car at row 2 (y), column 10 (x)
    logits[0, 3, 0, 0] = 6.0  # a bus on the border: no 3x3 window there
    logits[0, PEDESTRIAN, 23, 31] = 4.0  # a pedestrian in the far corner: kernel 1
    head.heatmap_head = FixedLogits(logits)
    prediction = head.prediction_heads[0]
    biases = {
        "center": [0.0, 0.0],
        "height": [0.7],
        "dim": [math.log(4.0), math.log(2.0), math.log(1.5)],
        "rot": [math.sin(0.5), math.cos(0.5)],
        "vel": [1.0, -2.0],
        "heatmap": [1.0] * 10,
    }
    for name, bias in biases.items():
        torch.nn.init.zeros_(getattr(prediction, name)[-1].weight)
        getattr(prediction, name)[-1].bias.data = torch.tensor(bias)
    with torch.no_grad():
        outputs = head(torch.randn(2, 4, 24, 32))
    assert outputs["query_labels"].tolist() == [[0, PEDESTRIAN]] * 2
    assert outputs["query_cells"].tolist() == [[2 * 32 + 10, 23 * 32 + 31]] * 2
    detections = head.decode(outputs)[1]
    expected = torch.tensor(
        [
            [-16 + 10.5, -12 + 2.5, 0.7, 4.0, 2.0, 1.5, 0.5, 1.0, -2.0],
            [-16 + 31.5, -12 + 23.5, 0.7, 4.0, 2.0, 1.5, 0.5, 1.0, -2.0],
        ]
    )
    torch.testing.assert_close(detections["boxes"], expected)
    torch.testing.assert_close(
        detections["scores"], torch.sigmoid(torch.tensor(1.0)) * torch.sigmoid(torch.tensor([5.0, 4.0]))
    )
    assert detections["labels"].tolist() == [CLASSES.index("car"), CLASSES.index("pedestrian")]
    head.post_center_range = (-20.0, -20.0, -10.0, 15.0, 20.0, 10.0)  # x of the pedestrian is 15.5
    assert head.decode(outputs)[0]["labels"].tolist() == [CLASSES.index("car")]


BOXES = torch.tensor(
    [
        [5.3, -7.6, -0.5, 4.2, 1.9, 1.6, 0.4, 2.0, 0.0],
        [-9.2, 4.4, 0.0, 0.7, 0.6, 1.8, -1.2, 0.0, 0.5],
        [11.5, 8.5, 0.3, 7.0, 2.6, 3.0, 2.5, 0.0, 0.0],
    ]
)
LABELS = torch.tensor([CLASSES.index(name) for name in ("car", "pedestrian", "truck")])


def test_loss_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    head = TransFusionHead(4, grid=GRID, **TINY, num_decoder_layers=2)
    outputs = head(torch.randn(2, 4, 24, 32))
    losses = head.loss(outputs, [BOXES, torch.zeros(0, 9)], [LABELS, torch.zeros(0, dtype=torch.long)])
    assert set(losses) == {"heatmap", "cls_layer0", "bbox_layer0", "cls_layer1", "bbox_layer1"}
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    sum(losses.values()).backward()
    silent = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent


def test_head_memorises_one_sample() -> None:
    torch.manual_seed(0)
    head = TransFusionHead(
        8, grid=GRID, **{**TINY, "hidden_channels": 32, "num_heads": 4, "ffn_channels": 64}, dropout=0.0
    )
    features = torch.randn(1, 8, 24, 32)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(200):
        losses = head.loss(head(features), [BOXES], [LABELS])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    with torch.no_grad():
        detections = head.eval().decode(head(features))[0]
    best = detections["scores"].topk(3).indices
    for box, label in zip(BOXES, LABELS, strict=True):
        distance = (detections["boxes"][best, :2] - box[:2]).norm(dim=1)
        match = distance.argmin()
        assert distance[match] < 0.5 and detections["labels"][best][match] == label
        box_found = detections["boxes"][best][match]
        torch.testing.assert_close(box_found[3:6], box[3:6], rtol=0.1, atol=0.0)
        assert abs(math.remainder(box_found[6].item() - box[6].item(), 2 * math.pi)) < 0.1


def test_detector_with_a_transfusion_head_and_distillation_terms() -> None:
    torch.manual_seed(0)
    config = model_config("small_transfusion", ("lidar",))
    model = BEVFusion(config)
    assert isinstance(model.head, TransFusionHead)
    points = torch.cat(
        [
            torch.rand(3000, 3) * torch.tensor([60.0, 60.0, 4.0]) - torch.tensor([30.0, 30.0, 2.0]),
            torch.rand(3000, 2),
        ],
        1,
    )
    batch = {
        "points": [points, points[:1500]],
        "gt_boxes": [BOXES, BOXES[:1]],
        "gt_labels": [LABELS, LABELS[:1]],
    }
    outputs = model(batch)
    assert outputs["head"]["dense_heatmap"].shape == (2, 10, *model.output_shapes()["head"])
    losses = model.loss(outputs, batch)
    sum(losses.values()).backward()
    detections = model.decode(outputs)
    assert len(detections) == 2 and detections[0]["boxes"].shape == (100, 9)

    with pytest.raises(ValueError, match="type must be one of"):
        BEVFusion({**config, "head": {**config["head"], "type": "centre"}})

    center = BEVFusion(model_config("small", ("lidar",)))
    with pytest.raises(ValueError, match="'response'.*student's head is a TransFusionHead"):
        Distiller({"r": {"kind": "response", "source": "head"}}, {"r": 1.0}, model, center)
    kd = Distiller(
        {"kd": {"kind": "heatmap_kd", "source": "head"}}, {"kd": 1.0}, model, center.requires_grad_(False)
    )
    with torch.no_grad():
        teacher_outputs = center(batch)
    loss = kd({"head": outputs["head"]}, {"head": teacher_outputs["head"]}, batch)["distill/kd"]
    expected = kd.terms["kd"](
        outputs["head"]["dense_heatmap"], torch.cat([t["heatmap"] for t in teacher_outputs["head"]], 1)
    )
    torch.testing.assert_close(loss, expected)

    regrouped = model_config("small", ("lidar",))
    groups = HEAD_CLASS_GROUPS
    regrouped["head"]["tasks"] = [groups[1], groups[0], *groups[2:]]  # truck and construction_vehicle first
    with pytest.raises(ValueError, match="'heatmap_kl'.*channel by channel"):
        Distiller({"kl": {"kind": "heatmap_kl", "source": "head"}}, {"kl": 1.0}, model, BEVFusion(regrouped))


def unikd_head_from_fixture(case: dict) -> TransFusionHead:
    """unikd's head with a fixture case's settings and its mmdet3d state dict converted (module doc of the head)."""
    x_cells, y_cells = case["case"]["cells"]
    grid = BEVGrid(
        -x_cells * 0.3, -y_cells * 0.3, x_cells * 0.3, y_cells * 0.3, height=y_cells, width=x_cells
    )
    head = TransFusionHead(
        16,
        grid=grid,
        hidden_channels=16,
        num_heads=2,
        ffn_channels=32,
        head_conv=64,
        num_proposals=case["case"]["num_proposals"],
        num_decoder_layers=case["case"]["num_decoder_layers"],
        post_center_range=case["case"]["post_center_range"],
    )
    x_major = ("shared_conv.weight", "heatmap_head.0.conv.weight", "heatmap_head.1.weight")
    state = {
        key: value.transpose(-1, -2) if key in x_major else value for key, value in case["state_dict"].items()
    }
    head.load_state_dict(state)
    return head.eval()


def test_parity_with_mmdet3d_forward_and_decoding() -> None:
    fixture = torch.load(FIXTURE, weights_only=True)
    full = TransFusionHead(512, grid=BEVGrid.from_range((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 0.6))
    assert {key: list(value.shape) for key, value in full.state_dict().items()} == fixture["keys"]

    case = fixture["forward"]
    head = unikd_head_from_fixture(case)
    with torch.no_grad():
        outputs = head(case["bev"].transpose(-1, -2))  # mmdet3d's [B, C, X, Y] in unikd's [B, C, Y, X]
    theirs = case["outputs"]
    assert_close(outputs["dense_heatmap"], theirs["dense_heatmap"].transpose(-1, -2), "dense_heatmap")
    assert torch.equal(outputs["query_labels"], case["query_labels"])  # heatmap channels in both
    their_scores = theirs["query_heatmap_score"].gather(1, case["query_labels"][:, None])[:, 0]
    assert_close(outputs["query_scores"], their_scores, "query_scores")
    num_proposals = case["case"]["num_proposals"]
    for index, layer in enumerate(outputs["layers"]):  # mmdet3d concatenates the layers along the queries
        for name, maps in layer.items():
            assert_close(
                maps,
                theirs[name][..., index * num_proposals : (index + 1) * num_proposals],
                f"layers[{index}].{name}",
            )
    for sample, detections in enumerate(head.decode(outputs)):
        boxes = case["boxes"][sample].clone()
        boxes[:, 2] += boxes[:, 5] / 2  # mmdet3d's z is the bottom
        assert len(detections["boxes"]) == len(boxes) < num_proposals
        assert_close(detections["boxes"], boxes, f"boxes[{sample}]")
        assert_close(detections["scores"], case["scores"][sample], f"scores[{sample}]")
        assert detections["labels"].tolist() == [
            CLASSES.index(HEATMAP_CLASSES[label]) for label in case["labels"][sample]
        ]


def test_parity_with_mmdet3d_loss_and_assignment() -> None:
    case = torch.load(FIXTURE, weights_only=True)["loss"]
    head = unikd_head_from_fixture(case)
    boxes = [sample.clone() for sample in case["gt_boxes"]]
    for sample in boxes:
        sample[:, 2] += sample[:, 5] / 2
    labels = [
        torch.tensor([CLASSES.index(HEATMAP_CLASSES[label]) for label in sample])
        for sample in case["gt_labels"]
    ]
    outputs = head(case["bev"].transpose(-1, -2))
    losses = head.loss(outputs, boxes, labels)
    theirs = case["losses"]
    for ours, name in (
        ("heatmap", "loss_heatmap"),
        ("cls_layer0", "layer_-1_loss_cls"),
        ("bbox_layer0", "layer_-1_loss_bbox"),
    ):
        assert abs(losses[ours].item() - theirs[name]) < 1e-4 * abs(theirs[name]), (
            ours,
            losses[ours].item(),
            theirs[name],
        )
    targets, their_targets = head.heatmap_targets(boxes, labels), case["heatmap_targets"].transpose(-1, -2)
    assert torch.equal(targets > 0, their_targets > 0) and torch.equal(targets == 1, their_targets == 1)
    torch.testing.assert_close(targets, their_targets)  # mmdet3d's Gaussians are float64 before the cast
    logits, decoded = (
        outputs["layers"][0]["heatmap"].detach().transpose(1, 2),
        head.query_boxes(outputs["layers"][0]),
    )
    for sample in range(2):
        assigned = head.assigner.assign(
            logits[sample], decoded[sample].detach(), boxes[sample], case["gt_labels"][sample]
        )
        expected = torch.where(assigned >= 0, case["gt_labels"][sample][assigned.clamp(min=0)], len(CLASSES))
        assert torch.equal(expected, case["class_targets"][sample])
