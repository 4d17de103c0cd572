#!/usr/bin/env bash
# One command for a machine with a CUDA GPU: installs nothing, checks what only a GPU can show, writes one summary.
#
#   bash tools/gpu_check.sh [OUT_DIR]      (default: gpu_check/; needs the CUDA torch and spconv of the README)
#
# 1. the GPU tests (pytest -m gpu: spconv on CUDA against its CPU result, a 16-mixed training step per modality,
#    the distillation terms on the input's device, the host syncs of a training step);
# 2. 20 training steps at the nuScenes size, --gpus 1 --precision 16-mixed, on a synthetic dataset it builds:
#    the LiDAR teacher, the camera student distilled from it (camera<-LiDAR), BEVFusion-LC (LiDAR + camera);
# 3. tools/benchmark.py --device cuda --precision 16-mixed.
# Each step's log is kept in OUT_DIR; OUT_DIR/summary.txt lists every step with its exit code and time, the
# GPU test figures (host syncs) and the benchmark's results. Exits non-zero if any step failed.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY="$OUT/summary.txt"

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch $(python -c 'import torch; print(torch.__version__)') sees no CUDA device;" \
         "this check needs a CUDA GPU and the CUDA builds of torch and spconv (README: On GPUs)" >&2
    exit 2
fi
python -c 'from unikd.ops.spconv_compat import check_cuda_build; check_cuda_build()' || exit 2

: > "$SUMMARY"
{
    echo "unikd GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    python -c 'import torch, spconv; print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), spconv {spconv.__version__}, {torch.cuda.get_device_name(0)}")'
    echo
} >> "$SUMMARY"
FAILED=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, one line in the summary
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%-28s exit %3d  %5ds  log %s\n' "$name" "$rc" "$((SECONDS - start))" "$OUT/$name.log" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || FAILED=1
    return "$rc"
}

export UNIKD_GPU_REPORT="$OUT/gpu_tests.json"
rm -f "$UNIKD_GPU_REPORT"
step gpu_tests python -m pytest -m gpu -q -s tests/test_gpu.py

DATA="$OUT/nuscenes-synthetic"
[ -d "$DATA/v1.0-mini" ] || step synthetic_data python tools/create_data.py synthetic --root "$DATA" --version v1.0-mini

EXPS=exps/nuscenes/BEVFusion
TRAIN=(--gpus 1 --precision 16-mixed -b 1 --max_epochs 1 --limit_train_batches 20 --limit_val_batches 0
       --data_root "$DATA" --output_root "$OUT/runs" --no_progress_bar --log_every_n_steps 1)
step train_lidar_teacher python "$EXPS/BEVFusion_nuscenes_centerhead_lidar_exp.py" "${TRAIN[@]}" --run_name gpu_check
TEACHER="$OUT/runs/BEVFusion_nuscenes_centerhead_lidar_exp/gpu_check/checkpoints/last.ckpt"
step train_camera_from_lidar python "$EXPS/BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py" "${TRAIN[@]}" \
    --run_name gpu_check --teacher_ckpt "$TEACHER"
step train_bevfusion_lc python "$EXPS/BEVFusion_nuscenes_centerhead_fusion_exp.py" "${TRAIN[@]}" --run_name gpu_check

step benchmark python tools/benchmark.py --device cuda --precision 16-mixed --json "$OUT/benchmark.json"

{
    echo
    echo "GPU test figures ($UNIKD_GPU_REPORT):"
    cat "$UNIKD_GPU_REPORT" 2>/dev/null || echo "(none written)"
    echo
    echo "benchmark (tail of $OUT/benchmark.log):"
    tail -n 60 "$OUT/benchmark.log" 2>/dev/null
} >> "$SUMMARY"
echo "summary: $SUMMARY"
exit "$FAILED"
