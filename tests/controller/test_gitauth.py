"""Git credentials come from Secret files, never from the URL or an argument (issue #14 item 5)."""

from __future__ import annotations

import base64
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from stagefleet.controller import source
from stagefleet.controller.spec import GIT_URL_PATTERN, SpecError, parse_spec
from stagefleet.gitauth import credential_env, has_credentials, has_password, ssh_command

ROOT = Path(__file__).resolve().parents[2]

WITH_PASSWORD = ["https://user:s3cret@git.example/r.git", "http://x:y@h:8080/r", "ssh://git:pw@h/r.git",
                 "https://:tok@git.example/r"]
# A token given as the user name of an http(s) URL (GitHub takes https://TOKEN@github.com/...).
WITH_USER = ["https://ghp_s3cret@github.com/o/r.git", "http://s3cret@h:8080/r", "https://user@git.example/r.git"]
FINE = ["https://git.example/r.git", "https://git.example/a@b", "ssh://git@h:2222/r.git", "git@h:o/r.git",
        "file:///srv/r.git", "git://h/r", "https://[::1]:8443/r", "https://h/r?at=a@b#c@d"]


def _crd_url_pattern() -> str:
    crd = yaml.safe_load((ROOT / "crds/imagebuild.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    pattern = spec["properties"]["source"]["properties"]["git"]["properties"]["url"]["pattern"]
    assert isinstance(pattern, str)
    return pattern


@pytest.mark.parametrize("url", WITH_PASSWORD)
def test_urls_with_a_password_are_refused_by_the_crd_and_the_operator(url: str) -> None:
    assert _crd_url_pattern() == GIT_URL_PATTERN
    assert has_password(url) and not re.search(GIT_URL_PATTERN, url)
    with pytest.raises(SpecError) as e:
        parse_spec({"source": {"git": {"url": url}}, "output": {"image": "r.io/a/b"}})
    assert e.value.path == "spec.source.git.url" and "secretRef" in str(e.value)
    assert "s3cret" not in str(e.value)


@pytest.mark.parametrize("url", WITH_USER)
def test_http_urls_with_a_user_name_are_refused_by_the_crd_the_operator_and_the_worker(url: str) -> None:
    from stagefleet.worker.spec import UsageError, parse_args

    assert has_credentials(url) and not re.search(GIT_URL_PATTERN, url)
    with pytest.raises(SpecError) as e:
        parse_spec({"source": {"git": {"url": url}}, "output": {"image": "r.io/a/b"}})
    assert e.value.path == "spec.source.git.url" and "secretRef" in str(e.value)
    assert "s3cret" not in str(e.value)
    with pytest.raises(UsageError) as u:
        parse_args(["--git-url", url, "--git-revision", "a" * 40, "--target", "t", "--push", "r.io/a/b:1"])
    assert "--git-url must not embed credentials" in str(u.value) and "s3cret" not in str(u.value)


@pytest.mark.parametrize("url", FINE)
def test_urls_without_credentials_pass(url: str) -> None:
    assert not has_password(url) and not has_credentials(url) and re.search(GIT_URL_PATTERN, url)


def test_ssh_checks_host_keys_strictly_unless_switched_off(tmp_path: Path) -> None:
    strict = ssh_command(tmp_path / "k", tmp_path / "known_hosts")
    assert "StrictHostKeyChecking=yes" in strict and f"UserKnownHostsFile={tmp_path}/known_hosts" in strict
    assert "accept-new" not in strict and "accept-new" not in ssh_command(None, None)
    assert "UserKnownHostsFile=/dev/null" in ssh_command(None, None)  # no file: every host key refused
    assert "StrictHostKeyChecking=no" in ssh_command(None, None, insecure_ignore_host_key=True)
    with pytest.raises(SpecError) as e:
        parse_spec({"source": {"git": {"url": "git@h:o/r.git"}}, "output": {"image": "r.io/a/b"}})
    assert e.value.path == "spec.source.git.secretRef" and "known_hosts" in e.value.message


def _fill(env: dict[str, str]) -> str:
    return subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=git.example\n\n",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
                               **env}, capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="git missing")
def test_credential_helper_reads_the_files(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("t0k3n\n")
    (tmp_path / "username").write_text("robot")
    out = _fill(credential_env(tmp_path / "password", tmp_path / "username"))
    assert "username=robot\n" in out and "password=t0k3n\n" in out
    assert "username=git\n" in _fill(credential_env(tmp_path / "password", None))


class _AuthRepo(http.server.SimpleHTTPRequestHandler):
    """A repository over git's dumb http protocol behind HTTP basic auth."""

    expected = ""
    seen: list[str] = []  # noqa: RUF012 (set per test)

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization") or ""
        self.seen.append(auth)
        if auth != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def auth_repo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    work, bare = tmp_path / "work", tmp_path / "srv" / "r.git"
    work.mkdir()
    (work / "Dockerfile").write_text("FROM x\n")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "-C", str(work), "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "-C", str(work), "add", "."], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "one"], check=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)
    commit = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    _AuthRepo.expected = "Basic " + base64.b64encode(b"robot:t0k3n").decode()
    _AuthRepo.seen = []
    handler = lambda *a: _AuthRepo(*a, directory=str(tmp_path / "srv"))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/r.git", commit
    finally:
        server.shutdown()


@pytest.mark.skipif(shutil.which("git") is None, reason="git missing")
def test_the_operator_authenticates_over_https_from_the_secret(
    auth_repo: tuple[str, str], tmp_path: Path
) -> None:
    url, commit = auth_repo
    home = tmp_path / "home"
    home.mkdir()
    env = source._env(source.GitAuth(username=b"robot", password=b"t0k3n\n"), home)
    assert not any("t0k3n" in v for v in env.values())  # in a 0600 file only
    assert (home / "password").stat().st_mode & 0o777 == 0o600
    assert source.pin_revision(url, "main", env, timeout=20) == commit
    assert _AuthRepo.expected in _AuthRepo.seen
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    with pytest.raises(source.SourceError) as e:
        source.pin_revision(url, "main", source._env(source.GitAuth(password=b"nope"), wrong), timeout=20)
    assert "nope" not in str(e.value)


@pytest.mark.skipif(shutil.which("git") is None, reason="git missing")
def test_the_worker_clones_over_https_with_the_secret_files(
    auth_repo: tuple[str, str], tmp_path: Path
) -> None:
    from stagefleet.worker.fetch import clone

    url, commit = auth_repo
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "password").write_text("t0k3n")
    (secret / "username").write_text("robot\n")
    dest = tmp_path / "ctx"
    clone(url, commit, dest, ssh_key=None, known_hosts=None, scratch=tmp_path,
          password_file=secret / "password", username_file=secret / "username")
    assert (dest / "Dockerfile").read_text() == "FROM x\n"
