"""Runtimes other than torch that kbit runs a model file in (llama.cpp: :mod:`kbit.core.runtime.llama_cpp`).

Nothing heavy is imported here: each runtime module imports its package when it is used.
"""
