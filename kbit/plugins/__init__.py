"""Built-in method plugins: one module per method, registered through the ``kbit.methods`` entry points."""
