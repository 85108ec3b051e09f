"""The training pipeline: config, run directory, SFT through the method hooks, merge, outputs."""
