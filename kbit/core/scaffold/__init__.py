"""``kbit new-method``: write a ready-to-install method plugin distribution from a template.

The template (``template/``) is a working method — a round-to-nearest k-bit base in plain torch with
a LoRA adapter and an exact merge — whose hooks carry their contracts as comments, with tests that
run kbit's contract suite, so ``pip install -e DIR && pytest DIR`` passes out of the box.
"""

from __future__ import annotations

import re
from pathlib import Path

from kbit.core.errors import ConfigError
from kbit.core.runs.outputs import claim

TEMPLATE = Path(__file__).parent / "template"  # its "package" folder becomes the method's module
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


def _check_name_free(name: str) -> None:
    """Refuse a name an installed method (or alias) already has: the plugin would lose the clash."""
    from kbit.core.methods.registry import default_registry

    for record in default_registry().records():
        if name == record.name or name in (record.info.aliases if record.info else ()):
            taken = "the method" if name == record.name else f"an alias of the method '{record.name}'"
            raise ConfigError(f"method name '{name}' is already {taken} from {record.distribution}; "
                              "choose another name")


def write_method(name: str, directory: Path | None = None) -> Path:
    """Write the distribution for method ``name`` into ``directory`` (default ``./kbit-NAME``); returns it.

    Refuses a name that is not a lowercase entry-point name and a directory that exists and is not empty.
    """
    from kbit import __version__

    if not _NAME.fullmatch(name):
        raise ConfigError(f"method name '{name}' must be lowercase letters, digits and single hyphens, "
                          "starting with a letter (e.g. my-int4)")
    _check_name_free(name)
    target = Path(directory) if directory else Path(f"kbit-{name}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        state = "is a file" if target.is_file() else "already exists and is not an empty folder"
        raise ConfigError(f"{target} {state}; choose another --dir")
    # the output rule of every command: never inside a kbit run, report or other output, never through a link in one
    claim(target, is_own=lambda p: False, kind="plugin", flag="--dir", what="plugin folder")
    module = "kbit_" + name.replace("-", "_")
    tokens = {"{name}": name, "{module}": module, "{dist}": f"kbit-{name}",
              "{kbit_version}": ".".join(__version__.split(".")[:2])}
    # Template files end in .tmpl so that neither setuptools nor pytest takes them for kbit's own code.
    files = {p: p.relative_to(TEMPLATE).with_suffix("") for p in sorted(TEMPLATE.rglob("*.tmpl"))}
    target.mkdir(parents=True, exist_ok=True)
    for source, relative in files.items():
        parts = [module if part == "package" else part for part in relative.parts]
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        for token, value in tokens.items():
            text = text.replace(token, value)
        destination.write_text(text, encoding="utf-8")
    return target
