"""The machine and the process: device and dtype, CPU probe, allocator, signals, console, input files."""
