"""Registry credentials from a dockerconfigjson: pushes to a registry that demands basic auth."""

from __future__ import annotations

import base64
import json
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from stagefleet.localregistry import LocalRegistry
from stagefleet.stagekey import key_tag
from stagefleet.worker import exitcodes

from .helpers import run_worker, skopeo_inspect, write_context

pytestmark = pytest.mark.builder
USER, PASSWORD = "robot", "pw-9f3c1e7a55"


@pytest.fixture
def auth_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A second docker-registry with htpasswd (bcrypt) auth; stopped by PID at the end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:  # pragma: no cover - Python >= 3.13
            pytest.skip("no crypt module to make a bcrypt htpasswd entry")
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))}\n")
    reg = LocalRegistry(tmp_path / "auth-registry", htpasswd=htpasswd)
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def _dockerconfigjson(path: Path, host: str, password: str) -> Path:
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    path.chmod(0o644)  # as a Secret volume file
    return path


def test_push_with_registry_auth_file(base_image: str, auth_registry: LocalRegistry, registry: LocalRegistry,
                                      tmp_path: Path) -> None:
    h = auth_registry.host
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo authed > /a\n")
    common = ["--context", str(ctx), "--target", "app", "--push", f"{h}/private/app:1",
              "--insecure-registry", h]

    good = _dockerconfigjson(tmp_path / "good.json", h, PASSWORD)
    r = run_worker([*common, "--registry-auth", str(good)], registry_host=registry.host, tmp=tmp_path / "p1")
    assert r.code == 0, r.stderr + r.stdout
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                          f"docker://{h}/private/app:1"], check=True, capture_output=True, text=True).stdout
    assert json.loads(out)["Digest"] == r.result["digest"]
    assert PASSWORD not in r.stdout + r.stderr

    # no or wrong credentials: a push failure that is not retried (retrying cannot help)
    wrong = _dockerconfigjson(tmp_path / "wrong.json", h, "not-the-password")
    for extra, pod in (([], "p2"), (["--registry-auth", str(wrong)], "p3")):
        r = run_worker([*common, *extra], registry_host=registry.host, tmp=tmp_path / pod)
        assert r.code == exitcodes.PUSH, r.stderr + r.stdout
        assert r.result["error"]["kind"] == "push"
        message = r.result["error"]["message"]
        assert "unauthorized" in message or "authentication" in message, message
        assert "retrying in" not in r.stderr


def test_warm_rebuild_on_a_basic_auth_registry_is_not_pushed_again(
        base_image: str, auth_registry: LocalRegistry, registry: LocalRegistry, tmp_path: Path) -> None:
    """The registry check before a push authenticates like buildah (basic auth from the auth file); so
    does the copy of the result's manifest to its key tag (`--stage-key`)."""
    h = auth_registry.host
    ctx = write_context(tmp_path / "ctx", f"FROM {base_image} AS app\nRUN echo cached > /c\n")
    good = _dockerconfigjson(tmp_path / "good.json", h, PASSWORD)
    args = ["--context", str(ctx), "--target", "app", "--cache-repo", f"{h}/private/cache",
            "--push", f"{h}/private/app:2", "--insecure-registry", h, "--registry-auth", str(good)]
    cold = run_worker(args, registry_host=registry.host, tmp=tmp_path / "p1")
    assert cold.code == 0, cold.stderr + cold.stdout
    key = "5e" * 32
    pin = f"{base_image}={base_image.rsplit(':', 1)[0]}@{skopeo_inspect(base_image)['Digest']}"
    warm = run_worker([*args, "--stage-key", key, "--pin-image", pin], registry_host=registry.host,
                      tmp=tmp_path / "p2")
    assert warm.code == 0, warm.stderr + warm.stdout
    assert warm.result["cachedSteps"] == warm.result["steps"] == 1
    assert "already serves this image" in warm.stderr and "worker: pushed " not in warm.stderr
    assert warm.result["digest"] == cold.result["digest"]
    assert warm.result["keyTagged"] is True and "(manifest copied in " in warm.stderr
    out = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", f"{USER}:{PASSWORD}",
                          f"docker://{h}/private/cache:{key_tag(key)}"], check=True, capture_output=True,
                         text=True).stdout
    assert json.loads(out)["Digest"] == warm.result["digest"]
    assert PASSWORD not in warm.stdout + warm.stderr
