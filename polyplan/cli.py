"""The ``polyplan`` command: thin. Parse, call the library, print.

Each subcommand group lives in ``polyplan/commands/<group>.py`` and exposes ``app`` (a
``typer.Typer``) or ``register(root)``. A ``UserError`` becomes one line on stderr and exit 2."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from polyplan.errors import UserError

root = typer.Typer(
    name="polyplan",
    help="Plan, run and measure multi-model (polybasic) speculative decoding.\n\n"
    "Pipeline: profile -> profile.json -> optimize -> plan.json -> run / bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@root.callback()
def _root() -> None:
    """Plan, run and measure multi-model (polybasic) speculative decoding."""


@root.command()
def version() -> None:
    """Print polyplan's version and the versions of the libraries it runs on."""
    from importlib.metadata import PackageNotFoundError, version as pkg_version

    from polyplan import __version__

    parts = [f"polyplan {__version__}"]
    for pkg in ("torch", "transformers", "sympy", "numpy"):
        try:
            parts.append(f"{pkg} {pkg_version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} (not installed)")
    print(", ".join(parts))


# group name -> module; a module that defines ``app`` becomes ``polyplan <group> ...``,
# one that defines ``register(root)`` adds top-level commands itself.
GROUPS = ["theory", "models", "run", "profile", "optimize", "bench", "plot", "quickstart"]


def _load_groups() -> None:
    for group in GROUPS:
        module = importlib.import_module(f"polyplan.commands.{group}")
        if hasattr(module, "register"):
            module.register(root)
        else:
            root.add_typer(module.app, name=group)


_load_groups()


#: rich cuts tables to 80 columns when output is not a terminal (a log, a pipe): wide enough for
#: every table instead, unless the user set COLUMNS
PIPED_COLUMNS = "200"


def main() -> None:
    """Console entry point: usage errors are click's; a UserError is one line and exit 2."""
    if not sys.stdout.isatty() and "COLUMNS" not in os.environ:
        os.environ["COLUMNS"] = PIPED_COLUMNS
    try:
        root()
    except UserError as e:
        print(f"polyplan: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
