"""Contracts (hook specs, records) and the pipelines that drive method plugins through them."""
