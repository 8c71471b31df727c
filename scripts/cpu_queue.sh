#!/usr/bin/env bash
# The long CPU protocols whose reports are still to be committed, one after another, each
# resuming from its workdir (rerun this script to go on; finished runs are skipped). Run it in
# the background on a quiet machine, nothing else heavy beside it (timings would be invalid):
#   nohup scripts/cpu_queue.sh > workdirs/cpu_queue.log 2>&1 &
# Stop with `kill -TERM <pid of the running python>` (saves the state), then, to carry the
# unfinished runs to another machine, pack them (scripts/carry_runs.py):
#   .venv/bin/python -m scripts.carry_runs pack --workdir=workdirs/degradation_cpu --out=carry/degradation_cpu.tar
# A failed step is logged and the queue goes on. Cost on 2 AVX2 cores, roughly, from the
# experiments' own step times (2 AVX-512 cores are about 3x faster): transfer and
# cifar_zoo hours; ResNet-20 time to accuracy about an hour on AVX-512.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
PY=.venv/bin/python

step() {
  echo "=== $(date -u +%FT%TZ) $*"
  "$PY" -m "$@" || echo "=== FAILED (exit $?): $*"
}

# Unfinished runs carried over from another machine (never overwrites newer local state);
# sweeps are packed with --finished (their finished members travel too).
for archive in carry/*.tar; do
  [ -e "$archive" ] || continue
  name=$(basename "$archive" .tar)
  "$PY" -m scripts.carry_runs unpack --archive="$archive" --workdir="workdirs/$name"
done

# Done and committed: every protocol's report (reports/), and ResNet-20's time to accuracy
# (benchmarks/results/time_to_accuracy_resnet20.json). Rerunning one from scratch:
# step experiments.transfer --preset=quick --report_dir=reports/transfer
# step experiments.cifar_zoo --preset=cpu --report_dir=reports/cifar_zoo \
#   --models=alexnet,vgg11_bn,vgg16_bn,zfnet,resnet18,densenet_bc_100_12,googlenet
# step benchmarks.time_to_accuracy --task=resnet20_cifar10 --frameworks=jax \
#   --workdir=workdirs/tta_resnet20 --out=benchmarks/results/time_to_accuracy_resnet20.json
# Done and committed too: bfloat16 against float32 in training (benchmarks/results/
# bfloat16_training.md; about 45 minutes on 2 AVX-512 cores, a CPU with bfloat16 needed):
# step cnn_jax.sweep --config=configs/bfloat16_training.py --seeds=3 \
#   --workdir=workdirs/bfloat16_training
# step benchmarks.bfloat16_training --workdir=workdirs/bfloat16_training \
#   --out=benchmarks/results/bfloat16_training.md
# Issue 24: He et al. at a quarter of the schedule (about 12 CPU-hours on 2 AVX2 cores; the
# runs go one after another, ResNet-20's extra seeds last), then the U-Net trained to a plateau.
# The runs so far trained on the float32 computation of commit 6103856; f0ef04b changed which
# oneDNN implementation computes the strided input gradients (same function, another summation
# order). To keep one computation, run this script from a worktree at 6103856 and regenerate the
# report with the current code (--report_only), as the closing notes of issue 24 say.
step experiments.degradation --preset=quarter \
  --models=resnet20,resnet56,plain56,plain20,resnet20_seed1,resnet20_seed2 \
  --workdir=workdirs/degradation_quarter --report_dir=reports/degradation_quarter
step experiments.unet_segmentation --preset=long --workdir=workdirs/unet_segmentation_long \
  --report_dir=reports/unet_segmentation_long
step experiments.readme_tables
echo "=== $(date -u +%FT%TZ) queue done"
