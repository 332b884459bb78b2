"""SIMULATED worker for control-plane benchmarks: builds NOTHING.

    stagefleet operator --worker-command "python bench/fake_worker.py --sleep 0.5 --"

Options before `--`: `--sleep S`, `--record DIR` (one JSON file per invocation: argv, result, times),
`--fail GROUP:EXITCODE` (that group reports ok=false and exits with the code; repeatable),
`--slow GROUP:SECONDS` (that group sleeps this long instead).
Takes the real worker's arguments (`--group`, `--target`, `--stage`, `--push`, `--result-file`, the rest
ignored), sleeps, and writes a result JSON shaped like the real worker's (docs/contracts.md) with a
synthetic digest (sha256 of the push reference and a random nonce) to the result file (the pod's
termination-message path) and stdout. `"simulated": true` marks the result. Standard library only, so a
pod costs one short Python start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    sleep = 0.5
    record: str | None = None
    fail: dict[str, int] = {}
    slow: dict[str, float] = {}
    while argv and argv[0] in ("--sleep", "--record", "--fail", "--slow"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--sleep":
            sleep = float(value)
        elif flag == "--record":
            record = value
        elif flag == "--slow":
            group, secs = value.split(":")
            slow[group] = float(secs)
        else:
            group, code = value.split(":")
            fail[group] = int(code)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        if argv[i].startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            opts.setdefault(argv[i][2:], []).append(argv[i + 1])
            i += 2
        else:
            i += 1
    started = time.time()
    sleep = slow.get((opts.get("group") or ["?"])[0], sleep)
    time.sleep(sleep)
    stages = opts.get("stage") or opts.get("target") or ["?"]
    push = (opts.get("push") or ["bench.invalid/simulated:latest"])[0]
    digest = "sha256:" + hashlib.sha256(f"{push}:{os.urandom(8).hex()}".encode()).hexdigest()
    result = {
        "ok": True, "simulated": True, "group": (opts.get("group") or ["?"])[0],
        "target": (opts.get("target") or stages)[-1], "image": push, "digest": digest,
        "cachedSteps": 0, "steps": len(stages),
        "stages": [{"name": s, "seconds": round(sleep / len(stages), 3), "cachedSteps": 0, "steps": 1}
                   for s in stages],
        "error": None,
    }
    group = str(result["group"])
    if group in fail:
        result.update(ok=False, digest=None, image=None,
                      error={"kind": "push", "message": f"SIMULATED failure of group {group}"})
    line = json.dumps(result, separators=(",", ":"))
    if record:
        entry = {"argv": argv, "result": result, "start": started, "end": time.time(), "pid": os.getpid()}
        with open(os.path.join(record, f"{group}-{os.getpid()}-{os.urandom(4).hex()}.json"), "w") as f:
            json.dump(entry, f)
    print(f"fake_worker: SIMULATED build of {', '.join(stages)} (slept {sleep} s, nothing built)")
    print(line, flush=True)
    for path in opts.get("result-file") or ():
        try:
            with open(path, "w") as f:
                f.write(line)
        except OSError as e:
            print(f"fake_worker: cannot write {path}: {e}", file=sys.stderr)
    return fail.get(group, 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
