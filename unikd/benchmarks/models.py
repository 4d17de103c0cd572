"""Benchmark cases of the model: training steps, `bev_pool` against a naive loop, the camera branches,
the heads, the fusers, and CenterHead's targets against the box loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unikd.benchmarks.harness import Context, median, peak_memory, time_interleaved, to_device
from unikd.benchmarks.inputs import (
    TERMS_BATCH,
    TERMS_BOXES,
    make_dataset,
    most_swept,
    random_boxes,
    training_batch,
)


# ------------------------------------------------------------------------------------ 3/5. train steps
def sweeps_read(modalities: tuple[str, ...]) -> int:
    """Sweeps of a training batch: 10 with LiDAR; a camera model reads the key frame's points only."""
    return 10 if "lidar" in modalities else 1


def training_step(ctx: Context, model: torch.nn.Module, batch: dict) -> Callable[[], torch.Tensor]:
    """One training step of `model` on `batch` per call: forward + loss + backward + AdamW, under the run's
    autocast and (for 16-mixed) its own loss scaler; the call returns the loss, detached."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "16-mixed")

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with ctx.autocast():
            outputs = model(batch)
            loss = sum(model.loss(outputs, batch).values())
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def bench_train_step(ctx: Context, size: str, modalities: tuple[str, ...], repeats: int) -> dict:
    from unikd.models.bevfusion import BEVFusion
    from unikd.models.configs import model_config

    torch.manual_seed(0)
    model = BEVFusion(model_config(size, modalities)).to(ctx.device).train()
    batch = to_device(training_batch(ctx, size, modalities, batch_size=1, num_sweeps=sweeps_read(modalities)), ctx.device)

    def forward() -> None:
        with torch.no_grad(), ctx.autocast():
            model(batch)

    step = training_step(ctx, model, batch)

    # The memory runs are the warm-ups (forward first: a step's peak is the larger one).
    forward_memory = peak_memory(forward, ctx.device)
    step_memory = peak_memory(step, ctx.device)
    times = time_interleaved({"forward": forward, "step": step}, repeats=repeats, device=ctx.device, warmup=0)
    forward_s, step_s = median(times["forward"]), median(times["step"])
    return {
        "ratio": step_s / forward_s,
        "ratio_meaning": "train step (forward + loss + backward + AdamW) / no-grad forward",
        "figures": {
            "parameters": sum(p.numel() for p in model.parameters()),
            "points": int(batch["points"][0].shape[0]),
            "step_s": step_s,
            "forward_s": forward_s,
            "step_peak_bytes": step_memory["peak_bytes"],
            "step_peak_upper_bound": step_memory["upper_bound"],
            "forward_peak_bytes": forward_memory["peak_bytes"],
            "forward_peak_upper_bound": forward_memory["upper_bound"],
            "repeats": repeats,
        },
        "notes": [
            f"model_config({size!r}, {modalities}), batch 1 (the sample with the most sweeps, training "
            "augmentation), model in train mode for both; step peak: the first step (AdamW state allocated)",
        ],
    }


def bench_lidar_train_step(ctx: Context, case: str) -> dict:
    repeats = 2 if case == "nuscenes" else ctx.repeats(5, 3)
    result = bench_train_step(ctx, case, ("lidar",), repeats)
    if case == "nuscenes":
        result["notes"].append("1 warm-up (the memory run) + 2 repeats")
    return result


def bench_camera_train_step(ctx: Context, case: str) -> dict:
    return bench_train_step(ctx, case, ("camera",), ctx.repeats(5, 3))


# ------------------------------------------------------------------------------------ 4. bev_pool
def reference_bev_pool(
    features: np.ndarray, cells: np.ndarray, grad_out: np.ndarray, out: np.ndarray, grad: np.ndarray
) -> None:
    """Naive sum pooling and its backward: one Python step per point (out, grad written in place)."""
    out.fill(0.0)
    for p in range(len(cells)):
        out[cells[p]] += features[p]
    for p in range(len(cells)):
        grad[p] = grad_out[cells[p]]


def frustum_cells(ctx: Context, size: str) -> tuple[torch.Tensor, dict]:
    """BEV cell index of every frustum point inside the splat grid, from one sample's camera matrices."""
    from unikd.data.collate import collate_batch
    from unikd.models.camera.lss import LSSViewTransform
    from unikd.models.camera.resnet import STAGE_STRIDES
    from unikd.models.configs import image_aug_for, model_config

    config = model_config(size, ("camera",))
    camera = config["camera"]
    stride = STAGE_STRIDES[camera["out_indices"][0]]
    transform = LSSViewTransform(
        in_channels=8,
        context_channels=camera["context_channels"],
        feature_stride=stride,
        depth_bins=camera["depth_bins"],
        point_cloud_range=config["point_cloud_range"],
        bev_cell=camera["bev_cell"],
        bev_downsample=camera["bev_downsample"],
    )
    dataset = make_dataset(
        ctx,
        ctx.eval_split,
        config["point_cloud_range"],
        1,
        use_camera=True,
        training=False,
        image_aug=image_aug_for(size),
    )
    batch = collate_batch([dataset[0]])
    height, width = image_aug_for(size).final_size
    feature_size = (height // stride, width // stride)
    _, cells = transform.geometry(
        batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"], feature_size
    )
    grid = transform.splat_grid
    frustum = (batch["imgs"].shape[1], transform.num_bins, *feature_size)
    shape = {
        "frustum": "x".join(str(n) for n in frustum),
        "frustum_points": int(np.prod(frustum)),
        "channels": camera["context_channels"],
        "height": grid.height,
        "width": grid.width,
    }
    return cells, shape


def bench_bev_pool(ctx: Context, case: str) -> dict:
    from unikd.ops.bev_pool import bev_pool

    cells, shape = frustum_cells(ctx, case)
    height, width, channels = shape["height"], shape["width"], shape["channels"]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(len(cells), channels, generator=generator).to(ctx.device).requires_grad_(True)
    grad_out = torch.randn(1, channels, height, width, generator=generator).to(ctx.device)
    cells = cells.to(ctx.device)

    def ours() -> None:
        bev_pool(features, cells, 1, height, width).backward(grad_out)
        features.grad = None

    rng = np.random.default_rng(0)
    n = min(len(cells), ctx.repeats(20000, 5000))
    pick = np.sort(rng.choice(len(cells), size=n, replace=False))
    sub_features = features.detach()[pick].cpu().numpy()
    sub_cells = cells[pick].cpu().numpy()
    flat_grad_out = grad_out[0].permute(1, 2, 0).reshape(-1, channels).cpu().numpy()
    ref_out = np.zeros((height * width, channels), dtype=np.float32)
    ref_grad = np.zeros_like(sub_features)

    def reference() -> None:
        reference_bev_pool(sub_features, sub_cells, flat_grad_out, ref_out, ref_grad)

    sub_torch = torch.from_numpy(sub_features).to(ctx.device).requires_grad_(True)
    sub_cells_torch = torch.from_numpy(sub_cells).to(ctx.device)

    def ours_subsample() -> None:
        bev_pool(sub_torch, sub_cells_torch, 1, height, width).backward(grad_out)
        sub_torch.grad = None

    memory = peak_memory(ours, ctx.device)
    times = time_interleaved(
        {"ours": ours, "ours_subsample": ours_subsample, "reference_subsample": reference},
        repeats=ctx.repeats(5, 3),
        device=ctx.device,
    )
    ours_s, ours_sub_s, ref_sub_s = (
        median(times[k]) for k in ("ours", "ours_subsample", "reference_subsample")
    )
    scale = len(cells) / n
    ref_scaled_s = ref_sub_s * scale

    # The reference is the same sum and gather: check it on the subsample.
    out = bev_pool(sub_torch, sub_cells_torch, 1, height, width)
    out.backward(grad_out)
    flat_out = out.detach()[0].permute(1, 2, 0).reshape(-1, channels).cpu().numpy()
    matches = np.allclose(flat_out, ref_out, atol=1e-4) and np.allclose(
        sub_torch.grad.cpu().numpy(), ref_grad
    )
    return {
        "ratio": ref_scaled_s / ours_s,
        "ratio_meaning": "naive reference (scaled to P) / ours, forward + backward: speed-up",
        "figures": {
            "frustum": shape["frustum"],
            "points_in_grid": len(cells),
            "channels": channels,
            "grid": f"{height}x{width}",
            "ours_s": ours_s,
            "reference_scaled_s": ref_scaled_s,
            "reference_subsample_points": n,
            "reference_subsample_s": ref_sub_s,
            "ours_subsample_s": ours_sub_s,
            "subsample_speedup": ref_sub_s / ours_sub_s,
            "reference_matches": bool(matches),
            "ours_peak_bytes": memory["peak_bytes"],
            "ours_peak_upper_bound": memory["upper_bound"],
        },
        "notes": [
            f"points: the frustum ({shape['frustum']} = Ncam x depth bins x feature H x W) of one sample's "
            "camera matrices, kept where inside the splat grid and z range; random normal features, batch 1",
            f"reference: numpy, one Python step per point for the sum and one for the gradient gather "
            f"(outputs preallocated); timed on a random {n}-point subsample and scaled linearly by "
            f"P/n = {scale:.1f} (an estimate); the subsample ratio is exact",
        ],
    }


# ------------------------------------------------------------------------------------ camera_forward
CAMERA_BRANCHES = {"resnet50_lss": "nuscenes", "swin_t_depth_lss": "bevfusion_fusion"}  # name -> model size


def bench_camera_forward(ctx: Context, case: str) -> dict:
    """Inference forward of the two nuScenes camera branches on one sample (six 256 x 704 images)."""
    from unikd.data.collate import collate_batch
    from unikd.models.camera import CameraBEVEncoder
    from unikd.models.configs import image_aug_for, model_config

    encoders = {}
    for name, size in CAMERA_BRANCHES.items():
        config = model_config(size, ("lidar", "camera"))
        camera = CameraBEVEncoder(point_cloud_range=config["point_cloud_range"], **config["camera"])
        encoders[name] = camera.to(ctx.device).eval()
    config = model_config("bevfusion_fusion", ("lidar", "camera"))
    dataset = make_dataset(
        ctx, ctx.eval_split, config["point_cloud_range"], 10, True, False, image_aug_for("bevfusion_fusion")
    )
    batch = to_device(collate_batch([dataset[most_swept(dataset, 1)[0]]]), ctx.device)
    inputs = [batch[key] for key in ("imgs", "lidar2cam", "cam2img", "img_aug", "bda", "points")]

    def forward(encoder: CameraBEVEncoder) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                encoder(*inputs)

        return call

    calls = {name: forward(encoder) for name, encoder in encoders.items()}
    memory = {name: peak_memory(call, ctx.device) for name, call in calls.items()}
    times = time_interleaved(calls, repeats=ctx.repeats(3, 2), device=ctx.device)
    seconds = {name: median(values) for name, values in times.items()}
    figures: dict[str, Any] = {"images": "x".join(str(n) for n in batch["imgs"].shape[1:])}
    for name, encoder in encoders.items():
        figures[f"{name}_s"] = seconds[name]
        figures[f"{name}_params"] = sum(p.numel() for p in encoder.parameters())
        figures[f"{name}_peak_bytes"] = memory[name]["peak_bytes"]
        figures[f"{name}_peak_upper_bound"] = memory[name]["upper_bound"]
    return {
        "ratio": seconds["swin_t_depth_lss"] / seconds["resnet50_lss"],
        "ratio_meaning": "Swin-T + DepthLSS (BEVFusion) / ResNet-50 + LSS (unikd's nuScenes camera), forward time",
        "figures": figures,
        "notes": [
            "model sizes bevfusion_fusion and nuscenes, random weights, eval mode, no gradient, batch 1; the "
            "DepthLSS branch also draws the sample's points (10 sweeps) into its depth image",
            f"interleaved rounds, median of {ctx.repeats(3, 2)} after a warm-up; peaks measured one after the other "
            "in this process",
        ],
    }


# ------------------------------------------------------------------------------------ 9. heads
HEAD_OBJECT_CLASSES = ("car", "pedestrian", "barrier", "traffic_cone", "truck", "bus")  # TERMS_OBJECTS' kinds
HEAD_SIZES = {"center": "nuscenes", "transfusion": "bevfusion_lidar"}  # head -> model size


def forward_and_train(
    ctx: Context,
    modules: dict[str, torch.nn.Module],
    forward: Callable[[torch.nn.Module], Callable[[], None]],
    train_step: Callable[[torch.nn.Module], Callable[[], None]],
) -> tuple[dict[str, float], dict[str, Any], int]:
    """(median seconds, figures, repeats) of each module's `forward` and `train_step` calls, named
    `<module>_forward` / `<module>_train`: interleaved rounds after a warm-up, peaks measured one after the
    other; the figures hold each module's parameter count, and each call's seconds and peak."""
    calls = {f"{name}_{kind}": make(module) for name, module in modules.items() for kind, make in
             (("forward", forward), ("train", train_step))}  # fmt: skip
    memory = {name: peak_memory(call, ctx.device) for name, call in calls.items()}
    repeats = ctx.repeats(3, 2)
    seconds = {name: median(values) for name, values in time_interleaved(calls, repeats, ctx.device).items()}
    figures: dict[str, Any] = {f"{name}_params": sum(p.numel() for p in m.parameters()) for name, m in modules.items()}
    for name in calls:
        figures[f"{name}_s"] = seconds[name]
        figures[f"{name}_peak_bytes"] = memory[name]["peak_bytes"]
        figures[f"{name}_peak_upper_bound"] = memory[name]["upper_bound"]
    return seconds, figures, repeats


def bench_head_step(ctx: Context, case: str) -> dict:
    """CenterHead and TransFusionHead on a nuScenes-size neck output: forward, and forward + loss + backward."""
    from unikd.data.classes import CLASSES
    from unikd.models.bevfusion import HEADS
    from unikd.models.configs import model_config
    from unikd.ops.bev_grid import BEVGrid

    gen = torch.Generator().manual_seed(0)
    grid = BEVGrid.from_range((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 0.6)
    heads, channels = {}, 0
    for name, size in HEAD_SIZES.items():
        config = model_config(size, ("lidar",))
        head_config, channels = dict(config["head"]), sum(config["neck"]["out_channels"])
        heads[name] = HEADS.build(head_config.pop("type", "center"), channels, grid=grid, **head_config).to(ctx.device)
    neck = torch.randn(TERMS_BATCH, channels, grid.height, grid.width, generator=gen).to(ctx.device)
    gt_boxes, gt_labels = [], []
    for _ in range(TERMS_BATCH):
        boxes, kinds = random_boxes(gen, TERMS_BOXES)
        gt_boxes.append(boxes.to(ctx.device))
        gt_labels.append(torch.tensor([CLASSES.index(HEAD_OBJECT_CLASSES[k]) for k in kinds], device=ctx.device))

    def forward(head: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                head.eval()(neck)

        return call

    def train_step(head: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            head.train().zero_grad(set_to_none=True)
            sum(head.loss(head(neck), gt_boxes, gt_labels).values()).backward()

        return call

    seconds, figures, repeats = forward_and_train(ctx, heads, forward, train_step)
    return {
        "ratio": seconds["transfusion_train"] / seconds["center_train"],
        "ratio_meaning": "TransFusionHead (bevfusion_lidar) / CenterHead (nuscenes), forward + loss + backward time",
        "figures": figures,
        "notes": [
            f"random weights, a random {channels}-channel {grid.height} x {grid.width} neck output, batch "
            f"{TERMS_BATCH}, {TERMS_BOXES} boxes per sample of nuScenes-like sizes; forward: eval mode, no gradient",
            f"interleaved rounds, median of {repeats} after a warm-up; peaks measured one after the other in this process",
        ],
    }


# ------------------------------------------------------------------------------------ fuser_step
FUSER_SIZES = {"small": ("small", "small_mgfm"), "nuscenes": ("nuscenes", "nuscenes_mgfm")}


def bench_fuser_step(ctx: Context, case: str) -> dict:
    """ConvFuser and the MGFM on random camera and LiDAR BEV maps: forward, and forward + backward."""
    from unikd.models.bevfusion import BEVFusion
    from unikd.models.configs import model_config

    models = {
        name: BEVFusion(model_config(size, ("lidar", "camera"))) for name, size in zip(("conv", "mgfm"), FUSER_SIZES[case], strict=True)
    }
    fusers = {name: model.fuser.to(ctx.device) for name, model in models.items()}
    shapes = models["conv"].output_shapes()  # both sizes share their branches' BEV maps
    gen = torch.Generator().manual_seed(0)
    inputs = [
        torch.randn(TERMS_BATCH, *shapes[key], generator=gen).to(ctx.device).requires_grad_(True)
        for key in ("camera_bev", "middle_encoder")
    ]

    def fused(fuser: torch.nn.Module) -> torch.Tensor:
        output = fuser(inputs)
        return output if isinstance(output, torch.Tensor) else output.bev

    def forward(fuser: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            with torch.no_grad():
                fused(fuser.eval())

        return call

    def train_step(fuser: torch.nn.Module) -> Callable[[], None]:
        def call() -> None:
            fuser.train().zero_grad(set_to_none=True)
            fused(fuser).square().mean().backward()

        return call

    seconds, figures, repeats = forward_and_train(ctx, fusers, forward, train_step)
    camera, lidar = (tuple(x.shape[1:]) for x in inputs)
    return {
        "ratio": seconds["mgfm_train"] / seconds["conv_train"],
        "ratio_meaning": f"MGFM ({FUSER_SIZES[case][1]}) / ConvFuser ({FUSER_SIZES[case][0]}), forward + backward time",
        "figures": figures,
        "notes": [
            f"random weights, random camera {camera} and LiDAR {lidar} BEV maps, batch {TERMS_BATCH}; forward: eval "
            "mode, no gradient; training: the mean square of the fused BEV backpropagated to both inputs",
            f"interleaved rounds, median of {repeats} after a warm-up; peaks measured one after the other in this process",
        ],
    }


# ------------------------------------------------------------------------------------ 13. center_targets
TARGETS_BOXES = 40  # boxes per sample at the nuScenes size


def reference_draw_gaussian(heatmap: torch.Tensor, center_col: int, center_row: int, radius: int) -> None:
    """Max-combine CenterPoint's Gaussian patch of `radius` centred at (col, row) into `heatmap` [H, W], in
    place: the box-by-box form of `unikd.ops.gaussian.draw_gaussians`."""
    sigma = (2 * radius + 1) / 6
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=heatmap.device)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    kernel = torch.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    kernel[kernel < torch.finfo(torch.float32).eps * kernel.max()] = 0
    height, width = heatmap.shape
    left, right = min(center_col, radius), min(width - center_col, radius + 1)
    top, bottom = min(center_row, radius), min(height - center_row, radius + 1)
    if left + right <= 0 or top + bottom <= 0:
        return
    region = heatmap[center_row - top : center_row + bottom, center_col - left : center_col + right]
    patch = kernel[radius - top : radius + bottom, radius - left : radius + right]
    torch.maximum(region, patch, out=region)


def reference_targets(
    gt_boxes: list[torch.Tensor],
    gt_labels: list[torch.Tensor],
    grid: Any,
    task_class_ids: tuple[tuple[int, ...], ...],
    min_overlap: float,
    min_radius: int,
    max_objs: int,
) -> list[tuple[torch.Tensor, ...]]:
    """The detection targets built box by box (the form `build_targets` replaced): per sample and task,
    `nonzero` of the task's boxes inside the grid, their codes written in order, each Gaussian drawn
    with `reference_draw_gaussian` from `.tolist()` values. Per task (heatmap, codes, indices, mask, classes)."""
    from unikd.data.classes import CLASSES
    from unikd.models.heads.box_coder import CODE_SIZE, center_cells, encode_boxes
    from unikd.ops.gaussian import gaussian_radius

    batch, device = len(gt_boxes), gt_boxes[0].device
    task_of = torch.full((len(CLASSES),), -1, dtype=torch.long, device=device)
    local_of = torch.zeros(len(CLASSES), dtype=torch.long, device=device)
    for task, ids in enumerate(task_class_ids):
        task_of[list(ids)] = task
        local_of[list(ids)] = torch.arange(len(ids), device=device)
    targets = [
        (
            torch.zeros(batch, len(ids), grid.height, grid.width, device=device),
            torch.zeros(batch, max_objs, CODE_SIZE, device=device),
            torch.zeros(batch, max_objs, dtype=torch.long, device=device),
            torch.zeros(batch, max_objs, dtype=torch.bool, device=device),
            torch.zeros(batch, max_objs, dtype=torch.long, device=device),
        )
        for ids in task_class_ids
    ]
    for sample, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        cells, offsets = center_cells(boxes, grid)
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < grid.width) & (cells[:, 1] >= 0) & (cells[:, 1] < grid.height)
        codes = encode_boxes(boxes, offsets)
        radius = gaussian_radius(boxes[:, 3].double() / grid.cell_x, boxes[:, 4].double() / grid.cell_y, min_overlap)
        radii = radius.floor().clamp_min(min_radius).long().tolist()
        task, local = task_of[labels], local_of[labels]
        cell_list, local_list = cells.tolist(), local.tolist()
        for t, (heatmap, target_codes, indices, mask, classes) in enumerate(targets):
            selected = torch.nonzero(inside & (task == t)).flatten()
            count = len(selected)
            target_codes[sample, :count] = codes[selected]
            indices[sample, :count] = cells[selected, 1] * grid.width + cells[selected, 0]
            mask[sample, :count] = True
            classes[sample, :count] = local[selected]
            for i in selected.tolist():
                col, row = cell_list[i]
                reference_draw_gaussian(heatmap[sample, local_list[i]], col, row, radii[i])
    return targets


def count_torch_ops(call: Callable[[], object]) -> dict[str, int]:
    """Operators dispatched by one call and the host reads among them (`unikd.ops.checks.dispatched_ops`)."""
    from unikd.ops.checks import dispatched_ops

    ops, reads = dispatched_ops(call)
    return {"ops": ops, "host_reads": len(reads)}


def bench_center_targets(ctx: Context, case: str) -> dict:
    """CenterHead's targets at the nuScenes size: `build_targets` (all boxes at once) against the box loop."""
    from unikd.data.classes import CLASSES, HEAD_CLASS_GROUPS
    from unikd.models.heads.center_targets import build_targets
    from unikd.ops.bev_grid import BEVGrid

    batch = int(case.removeprefix("batch"))
    gen = torch.Generator().manual_seed(0)

    grid = BEVGrid.from_range((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 0.6)
    task_ids = tuple(tuple(CLASSES.index(name) for name in task) for task in HEAD_CLASS_GROUPS)
    kind_class = torch.tensor([CLASSES.index(name) for name in ("car", "pedestrian", "barrier", "traffic_cone",
                                                                 "truck", "bus")])
    boxes, labels = [], []
    for _ in range(batch):
        sample, kind = random_boxes(gen, TARGETS_BOXES)
        boxes.append(sample.to(ctx.device))
        labels.append(kind_class[kind].to(ctx.device))
    settings = (grid, task_ids, 0.1, 2, 500)

    def batched() -> object:
        return build_targets(boxes, labels, *settings)

    def loop() -> object:
        return reference_targets(boxes, labels, *settings)

    new, old = batched(), loop()
    equal = all(
        torch.equal(getattr(target, name), reference[i])
        for target, reference in zip(new, old, strict=True)
        for i, name in enumerate(("heatmap", "codes", "indices", "mask", "classes"))
    )
    repeats = ctx.repeats(20, 5)
    times = time_interleaved({"batched": batched, "loop": loop}, repeats=repeats, device=ctx.device)
    batched_s, loop_s = median(times["batched"]), median(times["loop"])
    counts = {name: count_torch_ops(call) for name, call in (("batched", batched), ("loop", loop))}
    return {
        "ratio": loop_s / batched_s,
        "ratio_meaning": "box loop / batched, time per call",
        "figures": {
            "batch": batch,
            "boxes_per_sample": TARGETS_BOXES,
            "batched_s": batched_s,
            "loop_s": loop_s,
            "batched_ops": counts["batched"]["ops"],
            "loop_ops": counts["loop"]["ops"],
            "batched_host_reads": counts["batched"]["host_reads"],
            "loop_host_reads": counts["loop"]["host_reads"],
            "equal": equal,
        },
        "notes": [
            "six-task CenterHead targets on a 180 x 180 grid (0.6 m cells), min_overlap 0.1, min_radius 2, "
            "max_objs 500; random boxes of nuScenes-like sizes and classes over +-50 m (random_boxes)",
            "ops: aten operators dispatched per call (on a GPU each is a kernel launch, views aside); host_reads: "
            "the reads of tensor values by the host among them (item/bool, nonzero, equal) plus Tensor.tolist "
            "calls, each a host sync on a GPU; equal: every target tensor equal bit for bit",
            f"interleaved rounds, median of {repeats} after a warm-up",
        ],
    }


# ------------------------------------------------------------------------------------ 15. channels_last
CHANNELS_LAST_MODALITIES = {"camera": ("camera",), "lidar": ("lidar",), "fusion": ("camera", "lidar")}


def bench_channels_last(ctx: Context, case: str) -> dict:
    """A training step of one small detector with its 2D convolution weights contiguous and channels-last
    (`unikd.ops.memory_format.to_channels_last`, `--exp_options channels_last=True`)."""
    from unikd.models.bevfusion import BEVFusion
    from unikd.models.configs import model_config
    from unikd.ops.memory_format import to_channels_last

    modalities = CHANNELS_LAST_MODALITIES[case]
    batch = to_device(training_batch(ctx, "small", modalities, batch_size=2, num_sweeps=sweeps_read(modalities)), ctx.device)
    steps = {}
    for layout in ("contiguous", "channels_last"):
        torch.manual_seed(0)
        model = BEVFusion(model_config("small", modalities)).to(ctx.device).train()
        steps[layout] = training_step(ctx, to_channels_last(model) if layout == "channels_last" else model, batch)
    first_losses = {layout: float(step()) for layout, step in steps.items()}  # the warm-up round
    repeats = ctx.repeats(5, 3)
    times = time_interleaved(steps, repeats=repeats, device=ctx.device, warmup=0)
    contiguous_s, channels_last_s = median(times["contiguous"]), median(times["channels_last"])
    loss_difference = abs(first_losses["channels_last"] - first_losses["contiguous"]) / abs(first_losses["contiguous"])
    return {
        "ratio": channels_last_s / contiguous_s,
        "ratio_meaning": "channels-last / contiguous, training step (forward + loss + backward + AdamW)",
        "figures": {
            "contiguous_s": contiguous_s,
            "channels_last_s": channels_last_s,
            "first_loss_relative_difference": loss_difference,
            "repeats": repeats,
        },
        "notes": [
            f"model_config('small', {modalities}), batch 2 (the samples with the most sweeps, training augmentation), "
            "the same initial weights; interleaved rounds after a warm-up round; first_loss_relative_difference: "
            "the first step's total loss of the two layouts (float rounding)",
        ],
    }
