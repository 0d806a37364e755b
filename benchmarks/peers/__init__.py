"""Peer EMAs called the way their users call them. ``PEERS[backend]`` names the module whose
``cases(workload, dtype, device)`` join that backend's rows in the same run."""

PEERS = {"torch": "benchmarks.peers.torch", "jax": "benchmarks.peers.optax"}
