"""Implementation modules of optax_neuronlr; import from the package root."""
