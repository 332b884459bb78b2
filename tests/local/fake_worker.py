#!/usr/bin/env python3
"""A stand-in for `stagefleet-worker` that speaks its contract (arguments, stage-prefixed output, result
JSON, exit codes) without buildah, so the local runner is tested fast and deterministically.

FAKE_DIR: where it records its argv and pid (`<group>.json`); FAKE_FAIL: a target that fails (exit 13);
FAKE_HANG: a target that never finishes on its own (until it is stopped); FAKE_FAIL_AFTER: a group whose
record must exist before the failing target fails (so that group is surely running by then).
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
    Path(os.environ["FAKE_DIR"], f"{group}.json").write_text(json.dumps({"argv": argv, "pid": os.getpid()}))
    print(f"[{target}] STEP 1/2: FROM base AS {target}", flush=True)
    print(f"[{target}] secret is {os.environ.get('FAKE_ECHO', '')}", flush=True)
    if os.environ.get("FAKE_HANG") == target:
        while True:
            time.sleep(1)
    if os.environ.get("FAKE_FAIL") == target:
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
        code = 0
    Path(opts["--result-file"][0]).write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
