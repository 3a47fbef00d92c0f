"""The reward server and its client: ``python -m genrm_jax.serve`` runs ``server``.

``server`` (the FastAPI app, the scorer and the command line), ``api`` (wire formats: parsing and
checking requests, building responses), ``batcher`` (dynamic batching onto one scoring thread),
``metrics`` (Prometheus) and ``client`` (a standard-library client and the verl / OpenRLHF reward
functions, which import nothing else of the package's). Nothing is imported here, so the client
stays light.
"""
