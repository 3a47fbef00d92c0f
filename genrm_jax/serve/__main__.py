"""``python -m genrm_jax.serve``: the reward server (``genrm_jax.serve.server``)."""

from genrm_jax.serve import server

server.main()
