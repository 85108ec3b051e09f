"""``kbit export``: deployable files written from a run or a model, each checked against its source."""
