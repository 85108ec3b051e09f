"""Models: where a base comes from and how it is loaded, quantized, adapted, merged and checked."""
