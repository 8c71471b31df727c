# cnn_jax: every target sets up .venv itself (pinned, idempotent) before running.
PY := .venv/bin/python
SETUP := scripts/setup_env.sh
# glibc's malloc on transparent huge pages for the test runner (cnn_jax/runtime.py says why);
# the entry points restart themselves on mimalloc (its wheel) where installed, else on this.
HUGE_PAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1

.PHONY: setup degradation-toy degradation-cpu degradation-quarter unet-long lenet5-mnist lenet5-mnist-quick test test-all param-table readme bench bench-gpu clean

setup:
	@$(SETUP)

## The main job: LeNet-5 on the bundled MNIST (claims C13-C15); report in workdirs/lenet5_mnist/.
lenet5-mnist: setup
	$(PY) -m experiments.lenet5_mnist

degradation-toy: setup
	$(PY) -m experiments.degradation --preset=toy --models=plain8,resnet8

degradation-cpu: setup
	$(PY) -m experiments.degradation --preset=cpu --models=plain20,plain56,resnet56,resnet20 --report_dir=reports/degradation_cpu

# He et al. at a quarter of the schedule (~12 CPU-hours on 2 cores; resumes; scripts/cpu_queue.sh).
degradation-quarter: setup
	$(PY) -m experiments.degradation --preset=quarter --models=resnet20,resnet56,plain56,plain20,resnet20_seed1,resnet20_seed2 --workdir=workdirs/degradation_quarter --report_dir=reports/degradation_quarter

unet-long: setup
	$(PY) -m experiments.unet_segmentation --preset=long --workdir=workdirs/unet_segmentation_long --report_dir=reports/unet_segmentation_long

lenet5-mnist-quick: setup
	$(PY) -m experiments.lenet5_mnist --config=configs/lenet5_mnist.py:quick

## The test suite (what CI runs); test-all adds the slow tests.
test: setup
	$(HUGE_PAGES) $(PY) -m pytest -q

test-all: setup
	$(HUGE_PAGES) $(PY) -m pytest -q -m ''

## Reports committed under reports/ and the README tables generated from them.
param-table: setup
	$(PY) -m experiments.param_table --out=reports/param_table

lenet5-mnist-report: setup
	$(PY) -m experiments.lenet5_mnist --report_dir=reports/lenet5_mnist

readme: setup
	$(PY) -m experiments.readme_tables

bench: setup
	EXTRAS=bench $(SETUP)
	$(PY) -m benchmarks.train_step --json=benchmarks/results/latest.json

# On a GPU (needs a CUDA jaxlib and torch): bfloat16 against torch.compile, with MFU.
bench-gpu: setup
	EXTRAS=bench $(SETUP)
	$(PY) -m benchmarks.train_step --models=resnet50,resnet20 --variants=defaults \
	    --dtype=bfloat16 --torch_modes=compile --json=benchmarks/results/gpu.json

clean:
	rm -rf workdirs .pytest_cache
