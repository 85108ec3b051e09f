"""Run folders: ownership, the record (``kbit.json``) and its stamps, output rules, names and model cards."""
