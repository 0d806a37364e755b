"""One module per framework; ``MODULES`` lists them in run order."""

MODULES = ("numpy", "torch", "jax", "array_api_strict", "cupy")
