"""SIMULATED worker for control-plane benchmarks: builds NOTHING.

    stagefleet operator --worker-command "python bench/fake_worker.py --sleep 0.5 --"

Options before `--`: `--sleep S`, `--record DIR` (one JSON file per invocation: argv, result, times),
`--fail GROUP:EXITCODE` (that group reports ok=false and exits with the code; repeatable),
`--slow GROUP:SECONDS` (that group sleeps this long instead), `--registry-dir DIR` (the simulated
registry, see below; default $STAGEFLEET_FAKE_REGISTRY or <tmp>/stagefleet-fake-registry), `--sink URL`
(instead of both directories, for worker pods in real containers that share no directory with the test:
an HTTP service of the test's — `GET|PUT URL/marker/<ref>` is the simulated registry, `POST URL/record`
takes the record; see tests/reliability/sink.py).
Takes the real worker's arguments (`--group`, `--target`, `--stage`, `--push`, `--upstream-wait`,
`--result-file`, the rest ignored). Like the real worker, a pod started early waits until every
`--upstream-wait STAGE=REF` has been "pushed": here, until a marker file for REF exists in the simulated
registry directory, which each successful fake worker writes for its `--push` references. Then it
sleeps, and writes a result JSON shaped like the real worker's (docs/contracts.md) with a random
synthetic digest to the result file (the pod's termination-message
path) and stdout. `"simulated": true` marks the result. Standard library only, so a
pod costs one short Python start-up.
"""

from __future__ import annotations

import os
import signal
import sys
import time

# Imports are kept to os/sys/time (json only with --record): a pod of the simulation should cost little more
# than the interpreter's start, since on the dev cluster every pod's process shares the machine's CPUs
# with the API server, the kubelet and the operator being measured.


def _marker(registry: str, ref: str) -> str:
    """The simulated registry's record that ``ref`` was pushed."""
    return os.path.join(registry, ref.replace("%", "%25").replace("/", "%2F"))


def _http(method: str, url: str, body: str | None = None) -> str | None:
    """One request to the --sink service: the answer's text, or None for 404. Transient errors (the
    service or the network briefly away) are retried for a minute, then raised."""
    import urllib.error
    import urllib.request

    for attempt in range(600):
        req = urllib.request.Request(url, method=method, data=None if body is None else body.encode())
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return str(resp.read().decode())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            if attempt == 599:
                raise
        except OSError:
            if attempt == 599:
                raise
        time.sleep(0.1)
    return None


def _json(value: object) -> str:
    """Compact JSON of the result's plain types (dict, list, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        safe = (c if c not in '"\\' and ord(c) >= 0x20 else f"\\u{ord(c):04x}" for c in value)
        return '"' + "".join(safe) + '"'
    if isinstance(value, dict):
        return "{" + ",".join(f"{_json(str(k))}:{_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_json(v) for v in value) + "]"
    raise TypeError(type(value).__name__)


def main(argv: list[str]) -> int:
    sleep = 0.5
    record: str | None = None
    fail: dict[str, int] = {}
    slow: dict[str, float] = {}
    registry = os.environ.get("STAGEFLEET_FAKE_REGISTRY") or os.path.join(
        os.environ.get("TMPDIR") or "/tmp", "stagefleet-fake-registry")
    sink: str | None = None
    while argv and argv[0] in ("--sleep", "--record", "--fail", "--slow", "--registry-dir", "--sink"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--sink":
            sink = value.rstrip("/")
        elif flag == "--registry-dir":
            registry = value
        elif flag == "--sleep":
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
    waits = dict(value.split("=", 1) for value in opts.get("upstream-wait") or ())
    upstreams = {stage: ref.rsplit("@", 1)[1]
                 for stage, ref in (value.split("=", 1) for value in opts.get("upstream") or ())}
    if sink is not None:
        from urllib.parse import quote

        for stage, ref in waits.items():
            while (found := _http("GET", f"{sink}/marker/{quote(ref, safe='')}")) is None:
                time.sleep(0.1)
            upstreams[stage] = found
    else:
        while not all(os.path.exists(_marker(registry, ref)) for ref in waits.values()):
            time.sleep(0.1)  # the real worker's poll interval (worker/upstream.py)
        for stage, ref in waits.items():
            with open(_marker(registry, ref)) as f:
                upstreams[stage] = f.read()
    started = time.time()
    sleep = slow.get((opts.get("group") or ["?"])[0], sleep)
    time.sleep(sleep)
    stages = opts.get("stage") or opts.get("target") or ["?"]
    push = (opts.get("push") or ["bench.invalid/simulated:latest"])[0]
    digest = "sha256:" + os.urandom(32).hex()
    result = {
        "ok": True, "simulated": True, "group": (opts.get("group") or ["?"])[0],
        "target": (opts.get("target") or stages)[-1], "image": push, "digest": digest,
        "cachedSteps": 0, "steps": len(stages),
        "stages": [{"name": s, "seconds": round(sleep / len(stages), 3), "cachedSteps": 0, "steps": 1}
                   for s in stages],
        "error": None,
    }
    if upstreams:
        result["upstreams"] = upstreams
    group = str(result["group"])
    if group in fail:
        result.update(ok=False, digest=None, image=None,
                      error={"kind": "push", "message": f"SIMULATED failure of group {group}"})
    line = _json(result)
    if group not in fail and sink is not None:
        from urllib.parse import quote

        for ref in opts.get("push") or ():
            _http("PUT", f"{sink}/marker/{quote(ref, safe='')}", digest)
    elif group not in fail:
        os.makedirs(registry, exist_ok=True)
        for ref in opts.get("push") or ():
            with open(_marker(registry, ref), "w") as f:
                f.write(digest)
    entry = {"argv": argv, "result": result, "start": started, "end": time.time(), "pid": os.getpid()}
    if sink is not None:
        _http("POST", f"{sink}/record", _json(entry))
    elif record:
        with open(os.path.join(record, f"{group}-{os.getpid()}-{os.urandom(4).hex()}.json"), "w") as f:
            f.write(_json(entry))
    print(f"fake_worker: SIMULATED build of {', '.join(stages)} (slept {sleep} s, nothing built)")
    print(line, flush=True)
    for path in opts.get("result-file") or ():
        try:
            with open(path, "w") as f:
                f.write(line)
        except OSError as e:
            print(f"fake_worker: cannot write {path}: {e}", file=sys.stderr)
    return fail.get(group, 0)


def _terminate(signum: int, _frame: object) -> None:
    """SIGTERM ends the run as it ends the real worker's (exit 128+15). Without a handler a container's PID 1
    ignores SIGTERM: a deleted pod would sleep on and succeed within its grace period on a real node, while
    the dev kubelet's host process died at once."""
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main(sys.argv[1:]))
