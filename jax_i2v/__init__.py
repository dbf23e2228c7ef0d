"""jax_i2v: ConsistI2V image-to-video diffusion and MCM distillation in JAX/Flax."""

__version__ = "0.1.0"
