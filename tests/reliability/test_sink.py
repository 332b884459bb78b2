"""The SIMULATED worker's `--sink` mode (how it runs in real-tier worker pods), without a cluster: a pod
started early waits for its upstream's simulated push at the sink, and each run's record reaches the
records directory in the shape `read_records` and `assert_clean_success` use on both tiers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .conftest import FAKE_WORKER, read_records
from .sink import Sink


def test_sink_carries_simulated_pushes_and_records(tmp_path: Path) -> None:
    sink = Sink(tmp_path)
    try:
        base = "127.0.0.1:9/rel/b/stages:b-1-g1-a1"
        common = [sys.executable, str(FAKE_WORKER), "--sleep", "0", "--sink", sink.url, "--"]
        waiting = subprocess.Popen([*common, "--group", "g2", "--target", "left", "--upstream-wait",
                                    f"base={base}", "--push", "127.0.0.1:9/rel/b/stages:b-1-g2-a1"],
                                   stdout=subprocess.PIPE, text=True)
        assert waiting.poll() is None and read_records(tmp_path) == []  # nothing pushed: it waits
        first = subprocess.run([*common, "--group", "g1", "--target", "base", "--push", base],
                               capture_output=True, text=True, timeout=60, check=True)
        assert waiting.wait(timeout=60) == 0
    finally:
        sink.close()
    recs = {r["result"]["group"]: r for r in read_records(tmp_path, "b")}
    assert set(recs) == {"g1", "g2"}
    assert recs["g2"]["result"]["upstreams"] == {"base": recs["g1"]["result"]["digest"]}
    assert recs["g1"]["result"]["digest"] in first.stdout  # the result line, as the pod's log has it
    assert sink.markers[base] == recs["g1"]["result"]["digest"]
