"""gipip_jax: gradient inversion attacks on federated-learning updates, in JAX."""
