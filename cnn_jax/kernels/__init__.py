"""The CPU layer set (layer_set.py): C++ kernels where XLA's CPU backend is slowest, convolutions
through oneDNN (the library PyTorch uses on CPUs) and BatchNorm with its ReLU in two passes each
way (ops.py, library.py), im2col for small maps (conv.py) and a fast max-pool backward
(pooling.py). The models never import this package; the training loop binds the set that
`config.cpu_kernels` chooses. Values and gradients equal XLA's to float rounding
(tests/test_kernels.py); measurements in docs/cpu.md.

    python -m cnn_jax.kernels           # build the kernels now and print their status
"""
from cnn_jax.kernels.library import ENV, KERNELS, Unavailable, load, requested, status  # noqa: F401
