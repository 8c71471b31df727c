"""cnn_jax: classic CNNs in JAX/Flax, exact to the parameter, with experiments that reproduce them.

Importing it changes nothing in the process: programs call `cnn_jax.runtime.start()` first
(the allocator, XLA's flags, the compilation cache; see cnn_jax/runtime.py).
"""
