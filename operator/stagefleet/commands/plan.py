"""`stagefleet plan`: show the stage graph and build plan of a Dockerfile (or an ImageBuild's).

Invalid input exits 2 with one message on stderr and nothing on stdout, so scripts can trust stdout.
`--output FILE` writes the rendering to FILE instead; a `.png` or `.svg` FILE is the dot rendering drawn by
graphviz's `dot` (exit 2 when it is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stagefleet.plan import Plan, make_plan, plan_to_json, render_dot, render_mermaid, render_text
from stagefleet.stages import DockerfileError, parse_stage_graph

EXIT_INVALID = 2
EXIT_RENDER = 1
IMAGE_FORMATS = {".png": "png", ".svg": "svg"}
NO_DOT = "graphviz's dot is not installed; use --format dot"
IMAGEBUILD_API = "stagefleet.io/v1alpha1"


class InputError(ValueError):
    """Input that is not a usable Dockerfile or ImageBuild (message is shown as is)."""


@dataclass(frozen=True)
class PlanInput:
    """What to plan: Dockerfile text plus the target and build args that came with it."""

    text: str
    filename: str
    target: str | None
    build_args: dict[str, str]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("plan", help="show the stage graph and build plan of a Dockerfile")
    p.add_argument("-f", "--file", default="Dockerfile",
                   help="Dockerfile or ImageBuild YAML ('-' reads stdin; default: ./Dockerfile)")
    p.add_argument("--target", help="stage to build (default: the last one)")
    p.add_argument("--build-arg", action="append", default=[], metavar="K=V", help="build argument")
    p.add_argument("--platform", help="target platform for TARGET* args (default: this host)")
    p.add_argument("--format", choices=("text", "json", "dot", "mermaid"), default="text")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE instead of stdout; *.png and *.svg are drawn by graphviz's dot")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    output: str | None = getattr(args, "output", None)
    image = IMAGE_FORMATS.get(Path(output).suffix.lower()) if output else None
    dot = shutil.which("dot") if image else None
    try:
        if image and dot is None:
            raise InputError(NO_DOT)
        plan = build_plan(args)
    except (DockerfileError, InputError) as e:
        print(str(e), file=sys.stderr)
        return EXIT_INVALID
    if output is None:
        print(render(plan, args.format))
        return 0
    if image and dot:
        try:
            data = draw(render_dot(plan), dot, image)
        except RuntimeError as e:
            print(str(e), file=sys.stderr)
            return EXIT_RENDER
    else:
        data = (render(plan, args.format) + "\n").encode()
    try:
        Path(output).write_bytes(data)
    except OSError as e:
        print(f"{output}: cannot write: {e.strerror or e}", file=sys.stderr)
        return EXIT_INVALID
    return 0


def draw(dot_source: str, dot: str, fmt: str) -> bytes:
    """The dot source drawn by graphviz (`dot -Tpng` / `dot -Tsvg`)."""
    try:
        proc = subprocess.run([dot, f"-T{fmt}"], input=dot_source.encode(), capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(f"graphviz's dot failed: {e}") from None
    if proc.returncode != 0 or not proc.stdout:
        detail = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"graphviz's dot -T{fmt} failed (exit {proc.returncode}): {detail}")
    return proc.stdout


def build_plan(args: argparse.Namespace) -> Plan:
    cli_args = parse_build_args(args.build_arg)
    source = load_input(args.file)
    build_args = {**source.build_args, **cli_args}
    graph = parse_stage_graph(
        source.text,
        filename=source.filename,
        target=args.target or source.target,
        build_args=build_args,
        platform=args.platform,
    )
    return make_plan(graph)


def render(plan: Plan, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(plan_to_json(plan), indent=2)
    if fmt == "dot":
        return render_dot(plan)
    if fmt == "mermaid":
        return render_mermaid(plan)
    return render_text(plan)


def parse_build_args(items: list[str]) -> dict[str, str]:
    """`K=V` pairs; a bare `K` takes its value from the environment, as with docker build."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not key:
            raise InputError(f"invalid --build-arg {item!r}: expected K=V")
        if not eq:
            if key not in os.environ:
                continue
            value = os.environ[key]
        out[key] = value
    return out


def load_input(path: str) -> PlanInput:
    """Read the file (or stdin) and decide whether it is a Dockerfile or an ImageBuild."""
    text, filename = _read(path)
    doc = _maybe_yaml(text, filename)
    if doc is None:
        return PlanInput(text=text, filename=filename, target=None, build_args={})
    return imagebuild_input(doc, filename)


def _read(path: str) -> tuple[str, str]:
    if path == "-":
        return sys.stdin.read(), "Dockerfile"
    try:
        return Path(path).read_text(encoding="utf-8"), path
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file") from None


def _maybe_yaml(text: str, filename: str) -> Mapping[str, Any] | None:
    """An ImageBuild is a YAML mapping with `kind: ImageBuild`; anything else is a Dockerfile.

    A file named *.yaml/*.yml must be an ImageBuild, so its YAML errors are reported as such.
    """
    is_yaml_name = filename.endswith((".yaml", ".yml"))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if is_yaml_name:
            raise InputError(f"{filename}: invalid YAML: {e}") from None
        return None
    if isinstance(doc, dict) and (doc.get("kind") == "ImageBuild" or is_yaml_name):
        return doc
    if is_yaml_name:
        raise InputError(f"{filename}: expected an ImageBuild object (kind: ImageBuild)")
    return None


def imagebuild_input(doc: Mapping[str, Any], filename: str) -> PlanInput:
    """spec.source.inline.dockerfile, spec.target and spec.buildArgs (a list of {name, value} or a map)."""
    if doc.get("kind") != "ImageBuild":
        raise InputError(f"{filename}: kind is {doc.get('kind')!r}, expected 'ImageBuild'")
    if doc.get("apiVersion") != IMAGEBUILD_API:
        raise InputError(f"{filename}: apiVersion is {doc.get('apiVersion')!r}, expected {IMAGEBUILD_API!r}")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise InputError(f"{filename}: spec must be a mapping")
    text = _dig(spec, "source", "inline", "dockerfile")
    if not isinstance(text, str) or not text.strip():
        hint = ""
        if _dig(spec, "source", "git") is not None:
            path = spec.get("dockerfile") or "Dockerfile"
            hint = f" (it builds from git: plan the checkout's {path} with -f instead)"
        raise InputError(f"{filename}: spec.source.inline.dockerfile is required to plan an ImageBuild{hint}")
    target = spec.get("target")
    if target is not None and not isinstance(target, str):
        raise InputError(f"{filename}: spec.target must be a string")
    return PlanInput(text=text, filename="Dockerfile", target=target or None,
                     build_args=_spec_build_args(spec.get("buildArgs"), filename))


def _dig(doc: Mapping[str, Any], *keys: str) -> Any:
    """doc[k1][k2]..., or None where a level is missing or not a mapping."""
    value: Any = doc
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _spec_build_args(raw: Any, filename: str) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): _scalar(v) for k, v in raw.items()}
    if isinstance(raw, list):
        out: dict[str, str] = {}
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise InputError(f"{filename}: spec.buildArgs[{i}] must be {{name, value}}")
            out[item["name"]] = _scalar(item.get("value", ""))
        return out
    raise InputError(f"{filename}: spec.buildArgs must be a list of {{name, value}} or a map")


def _scalar(value: Any) -> str:
    """YAML turns `1.22` into a float and `true` into a bool; build args are strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
