"""gqbench: train and evaluate image tokenizers (GQ+TDC and baselines) through one quantizer interface."""
