"""Training data: sources (embedded arithmetic, local files, hub datasets), row formats, splits."""

from kbit.core.data.examples import (Example, TaskData, check_recorded_file, check_trained_on, every_assistant_turn,
                                    trained_prompts)
from kbit.core.data.loading import load_items, load_task_data

__all__ = ["Example", "TaskData", "check_recorded_file", "check_trained_on", "every_assistant_turn", "load_items", "load_task_data",
           "trained_prompts"]
