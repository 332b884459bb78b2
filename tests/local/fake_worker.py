#!/usr/bin/env python3
"""A stand-in for `stagefleet-worker` that speaks its contract (arguments, stage-prefixed output, result
JSON, exit codes) without buildah, so the local runner is tested fast and deterministically.

FAKE_DIR: where it records its argv and pid (`<group>.json`); FAKE_FAIL: a target that fails (exit 13);
FAKE_HANG: a target that never finishes on its own (until it is stopped); FAKE_FAIL_AFTER: a group whose
record must exist before the failing target fails (so that group is surely running by then);
FAKE_FLAKY=TARGET:N: the first N runs of TARGET fail as a push would (exit 14); FAKE_SLOW=TARGET:SECONDS.

The "registry": a pushed ref is a file under FAKE_DIR/tags holding its digest; ``--upstream-wait
NAME=REF`` polls for it and the result names the digest it took (``upstreams``), as the real worker does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    opts: dict[str, list[str]] = {}
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag.startswith("--"):
            opts.setdefault(flag, []).append(value)
    group, target = opts["--group"][0], opts["--target"][0]
    fake_dir = Path(os.environ["FAKE_DIR"])
    runs = sorted(fake_dir.glob(f"{group}.run*.json"))
    record = json.dumps({"argv": argv, "pid": os.getpid(), "started": time.time()})
    Path(fake_dir, f"{group}.run{len(runs) + 1}.json").write_text(record)
    Path(fake_dir, f"{group}.json").write_text(record)
    tags = fake_dir / "tags"
    tags.mkdir(exist_ok=True)
    upstreams: dict[str, str] = {}
    for wait in opts.get("--upstream-wait", []):
        stage, _, ref = wait.partition("=")
        tag = tags / ref.replace("/", "_")
        while not tag.exists():
            time.sleep(0.02)
        upstreams[stage] = tag.read_text()
    for up in opts.get("--upstream", []):
        stage, _, ref = up.partition("=")
        upstreams[stage] = ref.rpartition("@")[2]
    slow_target, _, seconds = os.environ.get("FAKE_SLOW", "").partition(":")
    if slow_target == target:
        time.sleep(float(seconds))
    flaky_target, _, flaky_runs = os.environ.get("FAKE_FLAKY", "").partition(":")
    print(f"[{target}] STEP 1/2: FROM base AS {target}", flush=True)
    print(f"[{target}] secret is {os.environ.get('FAKE_ECHO', '')}", flush=True)
    if os.environ.get("FAKE_HANG") == target:
        while True:
            time.sleep(1)
    if flaky_target == target and len(runs) < int(flaky_runs):
        print(f"[{target}] error: pushing: connection reset by peer", flush=True)
        result = {"ok": False, "group": group, "target": target, "image": None, "digest": None,
                  "error": {"kind": "push", "message": "pushing: connection reset by peer"}}
        code = 14
    elif os.environ.get("FAKE_FAIL") == target:
        wait_for = os.environ.get("FAKE_FAIL_AFTER")
        while wait_for and not Path(os.environ["FAKE_DIR"], f"{wait_for}.json").exists():
            time.sleep(0.05)
        print(f"[{target}] error: exit status 3", flush=True)
        result = {"ok": False, "group": group, "target": target, "image": None, "digest": None,
                  "error": {"kind": "build-step", "message": "RUN exit 3", "stage": target, "line": 2}}
        code = 13
    else:
        digest = "sha256:" + hashlib.sha256(group.encode()).hexdigest()
        result = {"ok": True, "group": group, "target": target, "image": opts["--push"][0], "digest": digest,
                  "cachedSteps": 1, "steps": 2,
                  "stages": [{"name": s, "seconds": 0.1, "cachedSteps": 1, "steps": 2}
                             for s in opts["--stage"]],
                  "error": None}
        if upstreams:
            result["upstreams"] = upstreams
        for ref in opts["--push"]:
            (tags / ref.replace("/", "_")).write_text(digest)
        code = 0
    Path(opts["--result-file"][0]).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
