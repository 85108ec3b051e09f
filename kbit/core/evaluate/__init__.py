"""``kbit eval``: what to evaluate, loading each model as its record says, measuring it (``kbit.core.measure``;
GGUF files in llama.cpp), and the report."""
