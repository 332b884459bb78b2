"""The `stagefleet` command: a thin dispatcher; each subcommand lives in its own module.

A subcommand module exposes ``register(subparsers) -> None``; the parser it adds sets ``func`` to a
callable taking the parsed namespace and returning the exit status. Modules are imported lazily so that
`stagefleet plan` never pays for kopf or the Kubernetes client.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

# (subcommand, module, one-line help). Each owner adds its line here.
COMMANDS: list[tuple[str, str, str]] = [
    ("plan", "stagefleet.commands.plan", "show the stage graph and build plan of a Dockerfile"),
    ("operator", "stagefleet.commands.operator", "run the ImageBuild operator (kopf) against a cluster"),
    ("build", "stagefleet.commands.build", "build an image locally, one worker process per plan group"),
    ("status", "stagefleet.commands.status", "show an ImageBuild's stages as a table"),
    ("logs", "stagefleet.commands.logs", "print an ImageBuild's stage pods' logs, stage-prefixed"),
    ("rebuild", "stagefleet.commands.rebuild", "run an ImageBuild again without editing its spec"),
    ("context", "stagefleet.commands.context", "push a build context as an OCI artifact (spec.source.oci)"),
    ("demo", "stagefleet.commands.demo", "run the seed example end to end on a throwaway dev cluster"),
    ("dev-cluster", "stagefleet.commands.devcluster", "local dev/test cluster: API emulator + kubelet"),
]


# Top-level modules of pyproject's "operator" extra: the worker and the local commands run without them.
OPERATOR_EXTRA = frozenset({"kopf", "kubernetes", "aiohttp", "prometheus_client"})


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; only the selected subcommand's module is imported."""
    description = __doc__.splitlines()[0] if __doc__ else None
    parser = argparse.ArgumentParser(prog="stagefleet", description=description)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        if selected == name:
            importlib.import_module(module).register(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    names = {name for name, _, _ in COMMANDS}
    selected = next((a for a in args_list if not a.startswith("-")), None)
    try:
        parser = build_parser(selected if selected in names else None)
        args = parser.parse_args(args_list)
        func = getattr(args, "func", None)
        if func is None:
            parser.print_help()
            return 2
        return cast(Callable[[argparse.Namespace], int], func)(args)
    except ModuleNotFoundError as e:
        if e.name not in OPERATOR_EXTRA:
            raise
        print(f"stagefleet {selected}: needs the Python package {e.name!r}, part of the operator extra: "
              "pip install 'stagefleet[operator]'", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
