"""Session fixtures shared by every test that needs the real builder: a registry and a base image.

`registry` runs Debian's docker-registry on a free loopback port for the whole session; `base_image` is
the offline busybox image pushed to it, `multiarch_base_image` a linux/amd64 + linux/arm64 index of such
images (skipped where arm64 binaries cannot run); `buildah_env(path)` gives the environment of a fresh buildah
storage root (a fresh "pod") and removes the root again at the end of the test.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stagefleet import binfmt, buildenv
from stagefleet.localregistry import (
    LocalRegistry,
    ensure_base_image,
    ensure_multiarch_base_image,
    ensure_pause_image,
)

BUILDER_TOOLS = ("buildah", "runc", "docker-registry", "skopeo")
TESTS = Path(__file__).resolve().parent
RELIABILITY = TESTS / "reliability"
REALTIER = TESTS / "realtier"

BuildahEnv = Callable[[Path], dict[str, str]]
TIER_FIXTURES = ("cluster", "kube", "rcluster")  # fixtures parametrised over tests/tiers.py's TIERS


# Run every per-tier test on every tier, `tiers` marks notwithstanding (e.g. while changing the dev cluster).
EVERY_TIER = "STAGEFLEET_TEST_EVERY_TIER"
# A test module's own xdist group beside the real tier's two (`pytest_collection_modifyitems`): its real
# variants run with tests/reliability's real tier, to even out the two halves.
WITH_REAL_RELIABILITY = (TESTS / "e2e" / "test_resilience.py", TESTS / "devcluster")


def item_tier(item: pytest.Item) -> str | None:
    """The tier the test runs on (the param of its tier fixture, tests/tiers.py); None: not per tier."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    return next((str(params[name]) for name in TIER_FIXTURES if name in params), None)


def on_real_tier(item: pytest.Item) -> bool:
    """The test runs on the real tier (a tier fixture of tests/tiers.py has the param "real")."""
    return item_tier(item) == "real"


def _off_tier(item: pytest.Item) -> bool:
    """A variant for a tier its `tiers` mark leaves out: `@pytest.mark.tiers("real")` on a test whose dev
    variant would prove nothing the real one does not (no fault only the dev cluster can inject, no
    emulator path of its own) and would only double its time in every run."""
    mark = item.get_closest_marker("tiers")
    tier = item_tier(item)
    return mark is not None and tier is not None and tier not in mark.args and not os.environ.get(EVERY_TIER)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which turns xdist_group marks into groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Units of work for pytest-xdist (scripts/test: `--dist loadgroup`, which keeps an `xdist_group` in one
    worker, in collection order, and hands out the groups with the most tests first):

    * "reliability": tests/reliability's dev tier (test_zz_canary runs after the rest of its tier's suite,
      in the same session, to see its evidence);
    * "real": tests/reliability's real tier, in file order (its canary last), on the real cluster of its
      worker's session;
    * "real-e2e": every other test on the session's real cluster (tests/e2e), apart from "real" so that
      the two long halves of the real tier run beside each other, each on a real cluster of its own (a
      session is a worker process): the real tier is half the suite's time, and as one unit it alone took
      longer than everything else. The real variants of WITH_REAL_RELIABILITY join "real", so that the
      two halves take about as long;
    * "realtier" (marked in its modules): tests that start a real cluster of their own;
    * every other test on its own.
    Without xdist only the order changes: the groups first, as listed. Variants a `tiers` mark leaves out
    are deselected (`_off_tier`)."""
    keep: list[pytest.Item] = []
    off: list[pytest.Item] = []
    for item in items:
        (off if _off_tier(item) else keep).append(item)
    if off:
        config.hook.pytest_deselected(items=off)
    items[:] = keep
    reliability = pytest.mark.xdist_group("reliability")
    real = pytest.mark.xdist_group("real")
    real_e2e = pytest.mark.xdist_group("real-e2e")
    first: list[pytest.Item] = []
    real_reliability: list[pytest.Item] = []
    with_reliability: list[pytest.Item] = []
    second: list[pytest.Item] = []
    own_clusters: list[pytest.Item] = []
    rest: list[pytest.Item] = []
    for item in items:
        path = Path(str(item.path))
        in_reliability = RELIABILITY in path.parents
        if in_reliability and on_real_tier(item):
            item.add_marker(real)
            real_reliability.append(item)
        elif on_real_tier(item) and any(p == path or p in path.parents for p in WITH_REAL_RELIABILITY):
            item.add_marker(real)
            with_reliability.append(item)
        elif in_reliability:
            item.add_marker(reliability)
            first.append(item)
        elif REALTIER in path.parents:
            own_clusters.append(item)
        elif on_real_tier(item):
            item.add_marker(real_e2e)
            second.append(item)
        else:
            rest.append(item)
    items[:] = first + real_reliability + with_reliability + second + own_clusters + rest


def _require_builder() -> None:
    missing = [t for t in BUILDER_TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"builder tools missing: {', '.join(missing)} (scripts/setup.sh installs them)")


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A running docker-registry: `.host` is "127.0.0.1:PORT", `.url` its http URL."""
    _require_builder()
    reg = LocalRegistry(tmp_path_factory.mktemp("registry"))
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def image_env(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One buildah storage root for the session's own images (base, pause), treating the registry as
    insecure; removed at the end of the session."""
    root = tmp_path_factory.mktemp("image-root")
    env = buildenv.prepare(root, insecure_registries=[registry.host])
    try:
        yield env
    finally:
        buildenv.cleanup(root, env)


@pytest.fixture(scope="session")
def base_image(registry: LocalRegistry, image_env: dict[str, str]) -> str:
    """The busybox base image in the session registry, e.g. "127.0.0.1:PORT/base/busybox:1"."""
    return ensure_base_image(registry.host, image_env)


@pytest.fixture(scope="session")
def multiarch_base_image(registry: LocalRegistry, image_env: dict[str, str]) -> str:
    """An OCI image index of busybox images for linux/amd64 and linux/arm64 in the session registry, e.g.
    "127.0.0.1:PORT/base/busybox-multiarch:1" (each image also as ":1-amd64", ":1-arm64"); the arm64
    busybox is Debian's (downloaded once into ~/.cache/stagefleet/busybox). When this machine cannot run
    arm64 binaries in a chroot (stagefleet.binfmt; scripts/setup.sh registers qemu): skipped, saying why,
    on a developer's machine, and a failure under CI (CI=true), whose setup must have registered it."""
    why_not = binfmt.status("arm64")
    if why_not is not None:
        if os.environ.get("CI"):
            pytest.fail(f"no arm64 emulation although scripts/setup.sh ran: {why_not}")
        pytest.skip(f"no arm64 emulation: {why_not}")
    return ensure_multiarch_base_image(registry.host, image_env)


@pytest.fixture(scope="session")
def pause_image(registry: LocalRegistry, image_env: dict[str, str]) -> str:
    """The real tier's sandbox image in the session registry (stagefleet.localregistry)."""
    return ensure_pause_image(registry.host, image_env)


@dataclass(frozen=True)
class TierImages:
    """Images the real tier's nodes run: the sandbox (pause) image and the worker's builder image."""

    pause: str
    builder: str


@pytest.fixture(scope="session")
def tier_images(registry: LocalRegistry, pause_image: str) -> TierImages:
    """The real tier's images in the session registry; the builder image is built by stagefleet.images
    (content-keyed cache: seconds after its first build on a machine), or STAGEFLEET_TEST_BUILDER_IMAGE."""
    builder = os.environ.get("STAGEFLEET_TEST_BUILDER_IMAGE")
    if not builder:
        try:
            from stagefleet.images import ensure_images
        except ImportError as e:  # pragma: no cover - only while the images module is being written
            pytest.skip(f"real tier: no builder image ({e})")
        builder = ensure_images(registry.host).builder
    return TierImages(pause=pause_image, builder=builder)


@pytest.fixture(scope="session")
def real_cluster(
    registry: LocalRegistry, pause_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The session's real tier (stagefleet.realcluster.RealCluster, 2 nodes pulling from the session
    registry), shared by every suite that runs on it; skipped with the reason when it cannot start here."""
    from stagefleet.realcluster import RealCluster, find_assets

    assets, why = find_assets()
    if assets is None:
        pytest.skip(f"real tier: {why}")
    rc = RealCluster(tmp_path_factory.mktemp("realcluster"), pause_image=pause_image,
                     registries=[registry.host], nodes=2, assets=assets)
    rc.start()
    try:
        yield rc
    finally:
        rc.stop()


@pytest.fixture
def buildah_env(registry: LocalRegistry) -> Iterator[BuildahEnv]:
    """Factory: `buildah_env(path)` → env for a fresh storage root at `path` (cleaned up afterwards)."""
    made: list[tuple[Path, dict[str, str]]] = []

    def make(root: Path) -> dict[str, str]:
        env = buildenv.prepare(root, insecure_registries=[registry.host])
        made.append((root, env))
        return env

    yield make
    for root, env in made:
        buildenv.cleanup(root, env)


# ---------------------------------------------------------------------------------- per-tier counts

_TIER_ID = re.compile(r"\[(?:[^\]]*-)?(dev|real)(?:-[^\]]*)?\](?:@[\w-]+)?$")  # xdist adds "@group"
_tier_counts: dict[str, Counter[str]] = {}


def tier_of(nodeid: str) -> str | None:
    """The tier a test ran on, from its id (`test_x[real-case]`): None for tests not run per tier."""
    m = _TIER_ID.search(nodeid)
    return m.group(1) if m else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    tier = tier_of(report.nodeid)
    if tier is None:
        return
    if (report.when == "call") or (report.when == "setup" and report.outcome != "passed"):
        _tier_counts.setdefault(tier, Counter())[report.outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per tier, e.g. `tier real: 60 passed, 0 failed, 2 skipped` (also under pytest-xdist, whose
    controller receives every worker's reports)."""
    for tier in sorted(_tier_counts):
        c = _tier_counts[tier]
        terminalreporter.write_line(
            f"tier {tier}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
