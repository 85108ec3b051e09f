"""Finding method plugins (entry points) and calling them through their hooks with the contract enforced."""
