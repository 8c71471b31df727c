"""C++ kernels for the CPU, where XLA's CPU backend is slowest: convolutions through oneDNN (the
library PyTorch uses on CPUs) and BatchNorm with its ReLU in two passes each way.

The models never call them directly: `ops.conv2d` and `ops.batch_norm_train` are the layers'
compute on every backend, and pick a kernel only for a CPU (ops.py says when). Speed measured in
benchmarks/results/levers.md (section 8); values and gradients equal XLA's to float rounding
(tests/test_kernels.py).

    CNN_JAX_CPU_KERNELS=0               # XLA's ops everywhere
    CNN_JAX_CPU_KERNELS=batch_norm      # only the named kernels (comma list)
    python -m cnn_jax.kernels           # build them now and print their status
"""
from cnn_jax.kernels.library import ENV, KERNELS, Unavailable, load, requested, status  # noqa: F401
