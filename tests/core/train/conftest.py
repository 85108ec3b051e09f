"""The training tests' shared run: one qlora run of the tiny model, trained once per session."""

import pytest

from tests.conftest import run_kbit

TRAIN = ("--max-steps", "3", "--batch-size", "2", "-o", "r=4", "--max-examples", "40", "--eval-limit", "4",
         "--logging-steps", "1", "--save-steps", "2")


@pytest.fixture(scope="session")
def qlora_run(tiny, tmp_path_factory):
    """A finished qlora run of the tiny model (``TRAIN``'s settings) and its completed process."""
    out = tmp_path_factory.mktemp("runs") / "qlora"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), *TRAIN, "--max-new-tokens", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result
