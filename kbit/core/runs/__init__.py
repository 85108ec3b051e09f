"""Run folders: ownership, the record (``kbit.json``, its typed parts and stamps), output rules, names and model cards."""
