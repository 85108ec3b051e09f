"""The contract between kbit and its method plugins: the hook specs, the records a method returns, its options."""
