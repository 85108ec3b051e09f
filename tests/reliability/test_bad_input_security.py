"""The bad-input table, security and messages: links in a pushed run, plugins that call ``sys.exit``,
names too long for the filesystem, a full disk met before the work, usage errors that point to help.

Each case exits 2 with one line naming the problem, no traceback, nothing written (as ``test_bad_input``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kbit.core.methods import registry as registry_module
from kbit.core.methods.registry import Registry
from tests.conftest import run_kbit
from tests.reliability.refusals import assert_refused
from tests.reliability.test_signals import _kbit_lines

PUSH = ("--repo-id", "a/b", "--dry-run")


def _files(root: Path, tiny: Path, run: Path) -> dict[str, Path]:
    """Every input the table refers to, written into ``root``: copies of ``run`` holding links to a
    secret outside them, and a model whose folder name is too long to derive a run name from."""
    secret = root / "secret"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE KEY")

    def run_with(name: str, link: str, target: Path) -> Path:
        copy = root / name
        shutil.copytree(run, copy, symlinks=True)
        if (copy / link).is_dir():
            shutil.rmtree(copy / link)
        else:
            (copy / link).unlink(missing_ok=True)
        (copy / link).symlink_to(target)
        return copy

    files = {
        "run": run,
        "run_link_file": run_with("run-link-file", "adapter/notes.txt", secret / "id_rsa"),
        "run_link_folder": run_with("run-link-folder", "merged/extra", secret),
        "run_link_artifact": run_with("run-link-artifact", "adapter", secret),
        "run_link_card": run_with("run-link-card", "README.md", secret / "id_rsa"),
        "run_link_weights": run_with("run-link-weights", "adapter/adapter_model.safetensors", secret / "id_rsa"),
        "long_model": root / ("m" * 230),
    }
    shutil.copytree(tiny, files["long_model"])
    return files


TRAIN = ("train", "--max-steps", "1", "--eval-limit", "0")

CASES = [
    # kbit push: a run folder is untrusted; nothing a link points to is uploaded
    (("push", "{run_link_file}", *PUSH), "notes.txt is a symbolic link (to "),
    (("push", "{run_link_file}", *PUSH, "--what", "adapter"), "notes.txt is a symbolic link"),
    (("push", "{run_link_folder}", *PUSH), "extra is a symbolic link"),
    (("push", "{run_link_folder}", *PUSH, "--what", "merged"), "extra is a symbolic link"),
    (("push", "{run_link_artifact}", *PUSH), "adapter is a symbolic link"),
    (("push", "{run_link_artifact}", *PUSH, "--what", "adapter"), "adapter is a symbolic link"),
    (("push", "{run_link_card}", *PUSH), "README.md is a symbolic link"),
    (("push", "{run_link_weights}", *PUSH, "--what", "adapter"), "adapter_model.safetensors is a symbolic link"),
    # a run name derived from a long model folder name: the fix is --name
    ((*TRAIN, "--model", "{long_model}"), "bytes long; use at most 200; pass --name NAME"),
    # usage errors point to help that exists
    (("frobnicate",), "No such command 'frobnicate'.; see 'kbit --help'"),
    (("frobnicate", "--lr", "1"), "see 'kbit --help'"),
    (("train", "--bogus"), "see 'kbit train --help'"),
    (("--debug-all", "train"), "see 'kbit --help'"),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CASES, ids=[f"{i:02d}-{c[1][:32]}" for i, c in enumerate(CASES)])
def test_bad_input(isolated, tiny, run, capsys, args, message):
    files = _files(isolated, tiny, run)
    err = assert_refused([a.format(**files) for a in args], message, capsys, isolated, run)
    assert "PRIVATE KEY" not in err


@pytest.mark.slow
def test_eval_checks_the_report_folder_has_room_before_scoring(isolated, run, capsys, monkeypatch):
    """A full disk is found before the first model is loaded, not after every variant was scored."""
    import shutil as shutil_module

    from kbit.core.evaluate import pipeline

    full = shutil_module._ntuple_diskusage(total=1 << 30, used=1 << 30, free=0)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: full)
    scored = []
    monkeypatch.setattr(pipeline, "evaluate_candidate", lambda *args, **kwargs: scored.append(args) or 1 / 0)
    err = assert_refused(["eval", str(run), "--out", str(isolated / "report")], "only 0 MiB free under", capsys,
                         isolated, run)
    assert "the report needs about 16 MiB; free some space or choose another --out" in err
    assert not scored, "models were scored before the report folder was checked"


EXIT_PLUGIN_CASES = [
    ("kbit_broken:exits_in_hook", "hook resolve_spec raised SystemExit"),
    ("kbit_broken:exits_in_describe", "describe_method raised SystemExit"),
]


@pytest.mark.slow
@pytest.mark.parametrize("target, message", EXIT_PLUGIN_CASES)
def test_a_plugin_calling_sys_exit_is_reported_as_its_error(isolated, plugin_site, monkeypatch, capsys, target, message):
    plugin_site.add("kbit-broken", "0.0.3", {"bad": target}, modules=("kbit_broken",))
    monkeypatch.setattr(registry_module, "_DEFAULT", Registry(entry_points=plugin_site.entry_points(), environ={}))
    err = assert_refused(["spec", "bad"], message, capsys, isolated)
    assert "kbit-broken 0.0.3" in err


@pytest.mark.slow
def test_sys_exit_in_a_hook_after_training_fails_the_run_naming_the_plugin(plugin_site, tiny, tmp_path):
    """``quantize_model`` calling ``sys.exit(0)`` once the adapter is merged: exit 2, never a silent 0."""
    plugin_site.add("kbit-exits", "1.0", {"toy": "kbit_exits"}, modules=("kbit_exits", "kbit_toy"))
    out = tmp_path / "run"
    result = run_kbit("train", "--model", str(tiny), "--output", str(out), "--method", "toy", "--max-steps", "1",
                      "--batch-size", "2", "--max-examples", "12", "--eval-limit", "0", env=plugin_site.env())
    said = _kbit_lines(result.stderr)
    assert result.returncode == 2 and len(said) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert said[0].startswith("kbit: error: ") and "hook quantize_model raised SystemExit" in said[0], said
    assert "kbit-exits 1.0" in said[0]
    record = json.loads((out / "kbit.json").read_text())
    assert record["status"] == "failed" and "SystemExit" in record["error"]
    assert not (out / ".kbit.lock").exists()


def test_a_distribution_in_the_working_directory_is_no_plugin(tmp_path):
    """``python -m kbit`` run inside a downloaded folder imports nothing from it: no ``*.dist-info`` loads as a method,
    no ``inspect.py`` shadows the standard library's."""
    info = tmp_path / "evilplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: evilplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[kbit.methods]\nevil = evil_plugin\n")
    marker = tmp_path / "ran"
    (tmp_path / "evil_plugin.py").write_text(f"open({str(marker)!r}, 'w').write('plugin code ran')\n")
    # a module named like one kbit's dependencies import, which Python would take from the working directory first
    (tmp_path / "inspect.py").write_text(f"open({str(marker)!r}, 'w').write('inspect.py ran')\n")
    result = run_kbit("methods", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "evil" not in result.stdout and not marker.exists()


def test_an_error_naming_a_file_with_a_line_break_is_one_line(tmp_path):
    result = run_kbit("eval", "no\nkbit: done", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "kbit: error: no kbit: done does not exist" in result.stderr
    result = run_kbit("eval", "t\x1b]0;title\x07\u2028x\vé", cwd=tmp_path)  # a terminal's title, a line separator
    assert result.returncode == 2 and "kbit: error: t\\x1b]0;title\\x07 x é does not exist" in result.stderr, result.stderr
