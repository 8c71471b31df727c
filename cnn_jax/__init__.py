"""cnn_jax: classic CNNs in JAX/Flax, exact to the parameter, with experiments that reproduce them."""
from cnn_jax import xla_setup as _xla_setup

_xla_setup.configure()  # before anything imports jax
