"""The ``kbit`` command line. Start-up and listing import no torch; each command imports its pipeline lazily."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from kbit.core.errors import KbitError

app = typer.Typer(
    name="kbit",
    help="Fine-tune LLMs on quantized bases; quantization methods are plugins.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state = {"debug": False}

OptionsArg = Annotated[
    Optional[list[str]],
    typer.Option("--option", "-o", help="Method option as key=value (repeatable), e.g. -o r=16."),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command("methods")
def methods_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """List every installed method: aliases, provider, status and capabilities."""
    from kbit.core.registry import default_registry

    records = [r.to_dict() for r in default_registry().records()]
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="kbit methods")
    for column in ("method", "aliases", "provided by", "status", "capabilities"):
        table.add_column(column)
    for r in records:
        caps = r["capabilities"]
        cap_text = ", ".join(
            [f"peft: {'/'.join(caps['peft_types'])}"] if caps else []
        ) + "".join(
            f", {label}" for key, label in (
                ("quantized_training", "quantized base"),
                ("post_training_quantization", "post-training quantization"),
                ("needs_calibration", "calibration"),
                ("needs_gpu", "GPU only"),
            ) if caps.get(key)
        )
        status = r["status"] + (f": {r['error']}" if r["error"] else "")
        table.add_row(r["name"], ", ".join(r["aliases"]), f"{r['distribution']} {r['version']}", status, cap_text)
    Console().print(table)


@app.command("spec")
def spec_command(
    method: Annotated[str, typer.Argument(help="Method name or alias (see 'kbit methods').")],
    option: OptionsArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for programs.")] = False,
) -> None:
    """Show the resolved quantization spec of METHOD and the quantization config it would build."""
    from kbit.core.options import parse_assignments
    from kbit.core.registry import get_method

    overrides = parse_assignments(option or [])
    chosen = get_method(method)
    chosen.check_requirements()
    spec = chosen.resolve_spec(overrides)
    config = chosen.build_quant_config(spec)
    policy = chosen.merge_policy(spec)
    result = {
        "method": chosen.name,
        "distribution": f"{chosen.distribution} {chosen.version}",
        "spec": spec.to_dict(),
        "quant_config": None if config is None else {"class": type(config).__name__, **_jsonable(config.to_dict())},
        "merge_policy": policy.to_dict(),
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(result))


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: a ``KbitError`` becomes one line on stderr and its exit code (traceback with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        app(args=args, standalone_mode=False)
    except KbitError as exc:
        if debug:
            raise
        typer.echo(f"kbit: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("kbit: aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("kbit: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence; click usage errors handled below
        import click

        if isinstance(exc, click.exceptions.ClickException):
            if debug:
                raise
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if debug:
            raise
        typer.echo(f"kbit: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)
