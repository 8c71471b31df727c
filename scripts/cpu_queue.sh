#!/usr/bin/env bash
# The long CPU protocols whose reports are still to be committed, one after another, each
# resuming from its workdir (rerun this script to go on; finished runs are skipped). Run it in
# the background on a quiet machine, nothing else heavy beside it (timings would be invalid):
#   nohup scripts/cpu_queue.sh > workdirs/cpu_queue.log 2>&1 &
# Stop with `kill -TERM <pid of the running python>` (saves the state), then, to carry the
# unfinished runs to another machine, pack them (scripts/carry_runs.py):
#   .venv/bin/python -m scripts.carry_runs pack --workdir=workdirs/degradation_cpu --out=carry/degradation_cpu.tar
# A failed step is logged and the queue goes on. Cost on 2 AVX2 cores, roughly, from the
# experiments' own step times: degradation what is left of ~5 h in all; init_variance ~45 min;
# LeNet-5 seeds ~10 min; cnn_vs_fc and gd_variants ~1 h each; U-Net, transfer and cifar_zoo hours.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
PY=.venv/bin/python

step() {
  echo "=== $(date -u +%FT%TZ) $*"
  "$PY" -m "$@" || echo "=== FAILED (exit $?): $*"
}

# Unfinished runs carried over from another machine (never overwrites newer local state).
for archive in carry/*.tar; do
  [ -e "$archive" ] || continue
  name=$(basename "$archive" .tar)
  "$PY" -m scripts.carry_runs unpack --archive="$archive" --workdir="workdirs/$name"
done

# C20, C21: the project's central claim.
step experiments.degradation --preset=cpu --models=plain20,plain56,resnet56,resnet20 \
  --workdir=workdirs/degradation_cpu --set=progress_bar=False --report_dir=reports/degradation_cpu
# C12: the dense stack and the CIFAR-10 plain-20 (no BN) under each initialisation.
step experiments.init_variance --report_dir=reports/init_variance
# C13-C15: LeNet-5 over 5 seeds beside the single run.
step experiments.lenet5_mnist_seeds --seeds=5 --report_dir=reports/lenet5_mnist
# C25, C13.
step experiments.cnn_vs_fc --report_dir=reports/cnn_vs_fc
step experiments.gd_variants --report_dir=reports/gd_variants
# C23, C24, C16-C19, C22.
step experiments.unet_segmentation --preset=cpu --report_dir=reports/unet_segmentation
step experiments.transfer --preset=quick --report_dir=reports/transfer
step experiments.cifar_zoo --preset=cpu --report_dir=reports/cifar_zoo
step experiments.readme_tables
echo "=== $(date -u +%FT%TZ) queue done"
