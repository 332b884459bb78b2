"""`stagefleet context push DIR REF`: push a build context as an OCI artifact for `spec.source.oci`.

CI systems that have the sources checked out (and no git server the cluster can reach) push the context
and give the printed digest reference to the ImageBuild, as Shipwright's `shp build upload` does. The
artifact is one gzip tar layer (`stagefleet.ocisource.pack`): the same content pushes the same digest.
Loopback registries and hosts given with --insecure-registry are spoken to in plain HTTP first, as
buildah's `insecure = true`; credentials come from --authfile (a dockerconfigjson, like buildah's).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from stagefleet import ocisource
from stagefleet.local import insecure_hosts
from stagefleet.worker.registry import Session


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("context", help="push a build context as an OCI artifact (spec.source.oci)",
                              description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    push = sub.add_parser("push", help="push DIR as a one-layer artifact to REF; prints REF@DIGEST")
    push.add_argument("directory", type=Path, help="the build context directory")
    push.add_argument("ref", help="where to push it: HOST[:PORT]/REPOSITORY[:TAG] (default tag: latest)")
    push.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                      help="speak plain HTTP (or unverified HTTPS) to this registry; loopback ones always")
    push.add_argument("--authfile", type=Path, default=os.environ.get("REGISTRY_AUTH_FILE"),
                      help="registry credentials, a dockerconfigjson (default: $REGISTRY_AUTH_FILE)")
    push.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    try:
        ref = ocisource.parse_ref(args.ref)
        if ref.digest:
            raise ValueError(f"{args.ref!r}: push to a tag; the digest is what this prints")
    except ValueError as e:
        print(f"stagefleet context push: REF {e}", file=sys.stderr)
        return 2
    if not args.directory.is_dir():
        print(f"stagefleet context push: {args.directory}: not a directory", file=sys.stderr)
        return 2
    layer, config, manifest = ocisource.pack(args.directory)
    if len(layer) > ocisource.MAX_LAYER_BYTES:
        print(f"stagefleet context push: {args.directory} packs to {len(layer)} bytes, more than the "
              f"{ocisource.MAX_LAYER_BYTES >> 20} MiB a context artifact may have", file=sys.stderr)
        return 1
    env = {"STAGEFLEET_INSECURE_REGISTRIES": ",".join([*insecure_hosts([ref.host + "/x"]),
                                                         *args.insecure_registry])}
    if args.authfile:
        env["REGISTRY_AUTH_FILE"] = str(args.authfile)
    session = Session(ref.host, env, timeout=120.0)
    for what, blob in (("context layer", layer), ("config", config)):
        if session.upload(ref.repository, blob) is None:
            print(f"stagefleet context push: uploading the {what} to {ref.host}/{ref.repository} failed "
                  "(unreachable, or credentials refused: see --authfile, --insecure-registry)",
                  file=sys.stderr)
            return 1
    tag = ref.tag or "latest"
    put = session("PUT", f"/v2/{ref.repository}/manifests/{tag}", {"Content-Type": ocisource.MANIFEST},
                  manifest)
    if put is None or put[0] != 201:
        answer = f"{put[0]} {put[2][:200].decode(errors='replace')}" if put else "no answer"
        print(f"stagefleet context push: the registry refused the manifest ({answer})", file=sys.stderr)
        return 1
    digest = put[1].get("docker-content-digest") or "sha256:" + hashlib.sha256(manifest).hexdigest()
    print(f"{ref.host}/{ref.repository}@{digest}")
    print(f"pushed {args.directory} ({len(layer)} bytes) as {ref.host}/{ref.repository}:{tag}",
          file=sys.stderr)
    return 0
