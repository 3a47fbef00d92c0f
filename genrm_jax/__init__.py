"""genrm-jax: Generative Verifiers (GenRM) on Gemma in JAX/Flax."""

from genrm_jax import startup as _startup

# Before anything imports JAX or TensorFlow (see genrm_jax.startup).
_startup.quiet_environment()
