"""The worker's pure decisions: arguments, buildah argv, output accounting, errors, result size."""

from __future__ import annotations

import base64
import hashlib
import json
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagefleet import buildenv
from stagefleet.localregistry import make_rootfs, registry_config
from stagefleet.worker import exitcodes
from stagefleet.worker.buildah import build_argv, push_argv
from stagefleet.worker.dockerinfo import DockerfileSyntaxError, analyse
from stagefleet.worker.output import OutputTracker, Scrubber, classify
from stagefleet.worker.push import is_transient
from stagefleet.worker.registry import (
    Reference,
    basic_credentials,
    manifest_digest_if_config,
    parse_reference,
)
from stagefleet.worker.result import MAX_BYTES, ErrorInfo, Result, StageResult, render
from stagefleet.worker.spec import SecretFile, SshKey, StepSpec, Upstream, UsageError, parse_args

DIGEST = "sha256:" + "ab" * 32
SEED = """ARG BASE=busybox
FROM ${BASE} AS build1
RUN echo 1 > /one.txt

FROM ${BASE} AS build2
RUN echo 2 > /two.txt

FROM ${BASE} AS final
COPY --from=build1 /one.txt /
COPY --from=build2 /two.txt /
RUN cat /one.txt \\
    /two.txt
"""


def test_parse_args_full() -> None:
    spec = parse_args(["--context", "/ctx", "--target", "final", "--stage", "final", "--group", "g3",
                       "--upstream", f"build1=reg:5000/x/stages@{DIGEST}", "--secret", "id=tok,src=/s/tok",
                       "--ssh", "default=/keys/id", "--build-arg", "A=1", "--build-arg", "FROM_ENV",
                       "--cache-repo", "reg:5000/x/cache", "--push", "reg:5000/x:1", "--push", "reg:5000/x:2",
                       "--insecure-registry", "reg:5000", "--jobs", "3", "--result-file", "/r"],
                      env={"FROM_ENV": "e", "STAGEFLEET_INSECURE_REGISTRIES": "other:1, reg:5000"})
    assert spec.upstreams == (Upstream("build1", f"reg:5000/x/stages@{DIGEST}"),)
    assert spec.secrets == (SecretFile("tok", Path("/s/tok")),)
    assert spec.ssh == (SshKey("default", Path("/keys/id")),)
    assert spec.build_args == (("A", "1"), ("FROM_ENV", "e"))
    assert spec.insecure_registries == ("reg:5000", "other:1")
    assert spec.push == ("reg:5000/x:1", "reg:5000/x:2") and spec.jobs == 3 and spec.group == "g3"
    assert spec.result_file == Path("/r")


@pytest.mark.parametrize("argv,fragment", [
    (["--target", "t", "--push", "r/x:1"], "one of"),
    (["--context", "/c", "--git-url", "file:///r", "--git-revision", "a", "--target", "t", "--push", "r"],
     "only one of"),
    (["--inline-dockerfile", "/f", "--context-dir", "a", "--target", "t", "--push", "r"], "needs --context"),
    (["--git-url", "file:///r", "--target", "t", "--push", "r/x:1"], "--git-revision"),
    (["--context", "/c", "--git-revision", "abc", "--target", "t", "--push", "r/x:1"], "need --git-url"),
    (["--context", "/c", "--target", "t"], "--push"),
    (["--context", "/c", "--target", "t", "--push", "r", "--upstream", "a=r/x:1"], "sha256"),
    (["--context", "/c", "--target", "t", "--push", "r", "--secret", "tok"], "id=ID,src=FILE"),
    (["--context", "/c", "--target", "t", "--push", "r", "--secret", "id=a,src=/x",
      "--secret", "id=a,src=/y"], "duplicate"),
    (["--context", "/c", "--target", "t", "--push", "r", "--ssh", "nokey"], "ID=KEYFILE"),
    (["--context", "/c", "--target", "t", "--push", "r", "--stage", "t", "--stage", "u"], "last --stage"),
    (["--context", "/c", "--target", "t", "--push", "r", "--context-dir", "../up"], "relative"),
    (["--context", "/c", "--target", "t", "--push", "r", "--dockerfile", "/etc/passwd"], "relative"),
    (["--context", "/c", "--target", "t", "--push", "r", "--jobs", "0"], "at least 1"),
    (["--context", "/c", "--oci-source", f"r.io/ctx@{DIGEST}", "--target", "t", "--push", "r"],
     "only one of"),
    (["--oci-source", "r.io/ctx:v1", "--target", "t", "--push", "r"], "names no digest"),
    (["--oci-source", "ctx@" + DIGEST, "--target", "t", "--push", "r"], "registry host"),
])
def test_parse_args_usage_errors(argv: list[str], fragment: str) -> None:
    with pytest.raises(UsageError, match=None) as e:
        parse_args(argv, env={})
    assert fragment in str(e.value)


def test_an_upstream_given_with_tag_and_digest_is_consumed_by_digest_alone() -> None:
    """Issue #14 item 4: the operator passes REPO:TAG@DIGEST; the build context names REPO@DIGEST only, so
    the tag (overwritable after the upstream's push) never decides what is built."""
    ups = (Upstream("build1", f"127.0.0.1:5000/t/app/stages/ns:seed-1-g1-a1@{DIGEST}"),
           Upstream("build2", f"r/s@{DIGEST}"))
    argv = build_argv(StepSpec(target="final", push=("r/x:1",), upstreams=ups), context_dir=Path("/c"),
                      dockerfile=Path("/c/D"), iidfile=Path("/i"), ssh_sockets={})
    contexts = [argv[i + 1] for i, a in enumerate(argv) if a == "--build-context"]
    assert contexts == [f"build1=docker-image://127.0.0.1:5000/t/app/stages/ns@{DIGEST}",
                        f"build2=docker-image://r/s@{DIGEST}"]


def test_build_argv_is_exact() -> None:
    spec = StepSpec(target="final", push=("r/x:1",), upstreams=(Upstream("build1", f"r/s@{DIGEST}"),),
                    secrets=(SecretFile("tok", Path("/s/tok")),), ssh=(SshKey("default", Path("/k")),),
                    build_args=(("A", "1"),), platform="linux/amd64", cache_repo="r/cache", jobs=2)
    argv = build_argv(spec, context_dir=Path("/ctx"), dockerfile=Path("/ctx/Dockerfile"),
                      iidfile=Path("/w/iid"), ssh_sockets={"default": "/tmp/a.sock"})
    assert argv == ["buildah", "build", "--layers", "--force-rm", "--target", "final",
                    "--file", "/ctx/Dockerfile", "--iidfile", "/w/iid", "--jobs", "2",
                    "--platform", "linux/amd64",
                    "--build-arg", "A=1", "--build-context", f"build1=docker-image://r/s@{DIGEST}",
                    "--secret", "id=tok,src=/s/tok", "--ssh", "default=/tmp/a.sock",
                    "--cache-to", "r/cache", "--cache-from", "r/cache", "/ctx"]
    no_cache = build_argv(StepSpec(target="t", push=("r",), cache_repo="r/c", no_cache=True),
                          context_dir=Path("/c"), dockerfile=Path("/c/D"), iidfile=Path("/i"), ssh_sockets={})
    assert "--no-cache" in no_cache and "--cache-from" not in no_cache and "--cache-to" in no_cache
    assert push_argv("abc", "r/x:1", Path("/d")) == [
        "buildah", "push", "--retry", "0", "--retry-delay", "10ms", "--digestfile", "/d", "abc", "docker://r/x:1"]


def test_dockerfile_info_stage_names_and_lines() -> None:
    info = analyse(SEED + "FROM build1\nRUN true\n")
    assert info.stages == ("build1", "build2", "final", "stage-3")
    assert info.find_line("RUN cat /one.txt     /two.txt", "final") == 11
    assert info.find_line("COPY --from=build2 /two.txt /", "final") == 10
    assert info.find_line("RUN true", None) == 14
    assert info.find_line("FOO ", None) is None
    with pytest.raises(DockerfileSyntaxError):
        analyse("FROM a\nRUN <<EOF\nx\n")


# What buildah 1.28 printed for the final stage of the seed with build1 replaced by --build-context
# and every step taken from the registry cache (abridged).
WARM_OUTPUT = """[2/3] STEP 1/2: FROM busybox AS build2
[3/3] STEP 1/4: FROM busybox AS final
Trying to pull busybox...
[3/3] STEP 2/4: COPY --from=build1 /one.txt /
[2/3] STEP 2/2: RUN echo 2 > /two.txt
--> Cache pulled from remote r/cache:81b3
--> Using cache 1dfe01e9243edb8ac3cc16c6279db7a45367a3656a3d01a5dc55c057883e0a05
--> 1dfe01e9243
[3/3] STEP 3/4: COPY --from=build2 /two.txt /
--> Using cache 8ed0859e61d61cb2bf841f3074d76b2e0c9557202accf0c70fc6a9bc2b365574
[3/3] STEP 4/4: RUN cat /one.txt /two.txt
--> Using cache 967076731c7457e9745ba32f0e6a27efc03ab97483e7073a88cc342756ff4555
[3/3] COMMIT
--> 967076731c7"""


def test_tracker_counts_steps_and_cache_hits_and_prefixes_lines() -> None:
    clock = iter(range(100))
    t = OutputTracker(analyse(SEED), "final", clock=lambda: float(next(clock)))
    printed = [t.feed(line) for line in WARM_OUTPUT.splitlines()]
    assert printed[0] == "[build2] STEP 1/2: FROM busybox AS build2"
    assert printed[1] == "[final] STEP 1/4: FROM busybox AS final"
    assert printed[2] == "[final] Trying to pull busybox..."
    assert printed[-2] == "[final] COMMIT"
    assert t.steps == 4 and t.cached == 3  # FROM is not a step
    assert t.stats["final"].steps == 3 and t.stats["build2"].steps == 1
    assert t.stats["final"].seconds > 0


def test_tracker_without_prefixes_uses_target() -> None:
    t = OutputTracker(analyse(SEED), "build1")
    assert t.feed("STEP 1/2: FROM busybox AS build1") == "[build1] STEP 1/2: FROM busybox AS build1"
    t.feed("STEP 2/2: RUN echo 1 > /one.txt")
    assert t.steps == 1 and t.cached == 0


def _fail_after(lines: list[str], target: str = "final", code: int = 1) -> tuple[int, str, int | None]:
    t = OutputTracker(analyse(SEED), target)
    for line in lines:
        t.feed(line)
    f = classify(t, code)
    return f.code, f.message, f.line


def test_classify_failing_step_with_quotes_in_it() -> None:
    code, msg, line = _fail_after([
        'STEP 1/2: FROM busybox AS build1',
        'STEP 2/2: RUN echo 1 > /one.txt',
        'some output', 'the last words', 'subprocess exited with status 3', 'subprocess exited with status 3',
        'Error: building at STEP "RUN echo 1 > /one.txt": exit status 3'], target="build1")
    assert code == exitcodes.BUILD_STEP and line == 3
    assert msg.startswith("Dockerfile:3: step 'RUN echo 1 > /one.txt' failed: exit status 3")
    assert msg.endswith("\n  some output\n  the last words\n  subprocess exited with status 3")
    q = 'RUN echo "a": b'
    t = OutputTracker(analyse(f'FROM x AS s\n{q}\n'), "s")
    for ln in ["STEP 1/2: FROM x AS s", f"STEP 2/2: {q}", f'Error: building at STEP "{q}": exit status 1']:
        t.feed(ln)
    f = classify(t, 1)
    assert f.code == exitcodes.BUILD_STEP and f.line == 2 and "failed: exit status 1" in f.message


@pytest.mark.parametrize("lines,code,fragment", [
    (['STEP 1/2: FROM busybox AS build1', 'STEP 2/2: FOO bar',
      'Error: building at STEP "FOO ": Build error: Unknown instruction: "FOO" &imagebuilder.Step{}'],
     exitcodes.DOCKERFILE, 'Unknown instruction: "FOO"'),
    (['STEP 1/2: FROM r/nope:1 AS build1', 'Trying to pull r/nope:1...',
      'Error: creating build container: initializing source docker://r/nope:1: manifest unknown'],
     exitcodes.PULL, "manifest unknown"),
    (['Error: The target "nope" was not found in the provided Dockerfile'], exitcodes.DOCKERFILE, "nope"),
    (['STEP 1/2: FROM busybox AS build1', 'STEP 2/2: RUN --mount=type=secret,id=z,required=true cat z',
      'Error: building at STEP "RUN --mount=type=secret,id=z,required=true cat z": resolving mountpoints for '
      'container "c": secret required but no secret with id z found'], exitcodes.SECRET, "id z"),
    (['STEP 1/2: FROM busybox AS build1', 'STEP 2/2: RUN true', '--> Pushing cache [r/cache]:abc',
      'Error: failed pushing cache to "127.0.0.1:9/c:abc": pinging container registry 127.0.0.1:9: '
      'Get "http://127.0.0.1:9/v2/": dial tcp 127.0.0.1:9: connect: connection refused'],
     exitcodes.PUSH, "pushing the layer cache failed"),
    (['Error: something odd'], exitcodes.UNEXPECTED, "something odd"),
])
def test_classify_failures(lines: list[str], code: int, fragment: str) -> None:
    got, msg, _ = _fail_after(lines, target="build1")
    assert got == code and fragment in msg, msg


def test_scrubber_hides_value_trimmed_lines_and_base64() -> None:
    secret = b"-----BEGIN KEY-----\nAAAAC3NzaC1lZDI1NTE5AAAA\n-----END KEY-----\n"
    s = Scrubber([secret, b"hunter22\n", b"ab"])
    assert s("pw=hunter22!") == "pw=***!"
    assert s(base64.b64encode(b"hunter22\n").decode()) == "***"
    assert s(base64.b64encode(b"hunter22").decode()) == "***"
    assert s("line AAAAC3NzaC1lZDI1NTE5AAAA seen") == "line *** seen"
    assert s("ab stays: too short to scrub") == "ab stays: too short to scrub"


@settings(max_examples=50, deadline=None)
@given(msg=st.text(min_size=0, max_size=20000), n=st.integers(0, 300))
def test_result_always_fits_termination_message(msg: str, n: int) -> None:
    stages = [StageResult(f"stage-{i}", 1.5, 1, 2) for i in range(n)]
    r = Result(ok=False, group="g1", target="t", stages=stages, error=ErrorInfo("build-step", msg, "t", 3))
    text = render(r)
    assert len(text.encode()) <= MAX_BYTES
    d = json.loads(text)
    assert d["ok"] is False and d["error"]["kind"] == "build-step"
    if len(json.dumps(msg, ensure_ascii=False).encode()) + 200 + 60 * n < MAX_BYTES:
        assert d["error"]["message"] == msg and len(d["stages"]) == n  # nothing cut when it fits


def test_result_keeps_the_tail_of_a_long_message() -> None:
    msg = "head " + "x" * 10000 + " the failing line"
    d = json.loads(render(Result(False, "g1", "t", error=ErrorInfo("build-step", msg))))
    assert d["error"]["message"].endswith(" the failing line") and d["error"]["message"].startswith("…")


def test_push_errors_transient_or_not() -> None:
    assert is_transient('pinging container registry r: dial tcp: connect: connection refused')
    assert is_transient("received unexpected HTTP status: 503 Service Unavailable")
    assert not is_transient("unauthorized: authentication required")
    assert not is_transient("requested access to the resource is denied")


def test_exit_code_classes_partition() -> None:
    assert exitcodes.USER_ERRORS.isdisjoint(exitcodes.RETRYABLE)
    assert exitcodes.CONFIGURATION_ERRORS.isdisjoint(exitcodes.RETRYABLE | exitcodes.USER_ERRORS)
    every = (exitcodes.USER_ERRORS | exitcodes.RETRYABLE | exitcodes.CONFIGURATION_ERRORS
             | {exitcodes.OK, exitcodes.USAGE})
    assert every == set(exitcodes.KIND) | {exitcodes.OK}


def test_buildenv_files_and_env(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text(json.dumps({"auths": {"r:5000": {"auth": "dTpw"}}}))
    root = tmp_path / ("deep" * 12) / "root"
    env = buildenv.prepare(root, insecure_registries=["r:5000", "r:5000", "q:1"], auth_file=auth,
                           base_env={"PATH": "/bin", "REGISTRY_AUTH_FILE": "/host", "CONTAINERS_CONF": "/h"})
    try:
        storage = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())["storage"]
        runroot = buildenv.BuildPaths(root).shm_runroot  # /dev/shm is a tmpfs on every Linux host
        assert storage == {"driver": "overlay", "graphroot": str(root / "storage"), "runroot": str(runroot)}
        assert runroot.is_dir() and runroot.stat().st_mode & 0o777 == 0o700
        regs = tomllib.loads(Path(env["CONTAINERS_REGISTRIES_CONF"]).read_text())
        assert regs == {"unqualified-search-registries": [], "registry": [
            {"location": "q:1", "insecure": True}, {"location": "r:5000", "insecure": True}]}
        assert env["BUILDAH_ISOLATION"] == "chroot" and "CONTAINERS_CONF" not in env
        assert env["REGISTRY_AUTH_FILE"] == str(root / "auth.json")
        assert (root / "auth.json").stat().st_mode & 0o777 == 0o600
        tmp = Path(env["TMPDIR"])  # long roots get a short, stable link (unix socket paths)
        assert len(str(tmp)) < 50 and tmp.resolve() == (root / "tmp").resolve()
    finally:
        buildenv.cleanup(root, env)
    assert not root.exists() and not Path(env["TMPDIR"]).is_symlink() and not runroot.exists()


def test_runroot_falls_back_below_the_root_unless_the_tmpfs_directory_is_ours(tmp_path: Path) -> None:
    root = tmp_path / "root"
    paths = buildenv.BuildPaths(root)
    paths.shm_runroot.symlink_to(tmp_path)  # planted by someone else
    try:
        env = buildenv.prepare(root)
        storage = tomllib.loads(Path(env["CONTAINERS_STORAGE_CONF"]).read_text())["storage"]
        assert storage["runroot"] == str(root / "run") and (root / "run").is_dir()
        buildenv.cleanup(root, env)
        assert paths.shm_runroot.is_symlink() and tmp_path.is_dir()  # neither followed nor removed
    finally:
        paths.shm_runroot.unlink()


def test_fstype_of_the_mount_a_path_lies_on() -> None:
    text = "/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\ntmpfs /dev/shmx tmpfs rw 0 0\n"
    assert buildenv.fstype(Path("/dev/shm"), text) == "tmpfs"
    assert buildenv.fstype(Path("/dev/shm/x"), text) == "tmpfs"
    assert buildenv.fstype(Path("/dev/sh"), text) == "ext4"
    assert buildenv.fstype(Path("/dev/shm"), "") is None


def test_auth_secrets_for_scrubbing() -> None:
    auth = base64.b64encode(b"robot:s3cr3t-pass").decode()
    data = buildenv.load_auth(json.dumps({"auths": {"r:1": {"auth": auth},
                                                    "q:2": {"identitytoken": "tok-123"}}}))
    assert set(buildenv.auth_secrets(data)) == {auth, "robot:s3cr3t-pass", "s3cr3t-pass", "tok-123"}


def test_auth_file_validation() -> None:
    assert buildenv.load_auth('{"r:1": {"auth": "x"}}') == {"auths": {"r:1": {"auth": "x"}}}
    for bad in ("not json", "[]", '{"auths": []}'):
        with pytest.raises(buildenv.AuthFileError):
            buildenv.load_auth(bad)


def test_mounts_under() -> None:
    text = ("overlay /x/root/storage/overlay/abc/merged overlay rw 0 0\n"
            "/dev/vda /x/root/storage/overlay ext4 rw 0 0\n/dev/vda /x/rootother ext4 rw 0 0\n")
    assert buildenv.mounts_under(Path("/x/root"), text) == ["/x/root/storage/overlay/abc/merged",
                                                             "/x/root/storage/overlay"]


def test_registry_config_and_rootfs(tmp_path: Path) -> None:
    assert "rootdirectory: /data" in registry_config(Path("/data"), "127.0.0.1:5000")
    assert "addr: 127.0.0.1:5000" in registry_config(Path("/data"), "127.0.0.1:5000")
    make_rootfs(tmp_path / "rootfs")
    assert (tmp_path / "rootfs/bin/sh").readlink() == Path("busybox")
    assert (tmp_path / "rootfs/etc/passwd").read_text().startswith("root:x:0:0:")


def test_unnamed_stages_reach_buildah_by_index() -> None:
    info = analyse("FROM x\nRUN a\nFROM x AS named\nFROM x\nCOPY --from=0 /a /a\n")
    assert info.stages == ("stage-0", "named", "stage-2")
    assert info.buildah_names() == {"stage-0": "0", "stage-2": "2"}
    spec = StepSpec(target="stage-2", push=("r",), upstreams=(Upstream("stage-0", f"r/s@{DIGEST}"),))
    argv = build_argv(spec, context_dir=Path("/c"), dockerfile=Path("/c/D"), iidfile=Path("/i"),
                      ssh_sockets={}, stage_names=info.buildah_names())
    assert argv[argv.index("--target") + 1] == "2"
    assert f"0=docker-image://r/s@{DIGEST}" in argv


def test_registry_reference_parsing() -> None:
    assert parse_reference("127.0.0.1:5000/a/b:1") == Reference("127.0.0.1:5000", "a/b", "1")
    assert parse_reference("reg.example.com/app") == Reference("reg.example.com", "app", "latest")
    assert parse_reference("localhost/x/y:v1.2") == Reference("localhost", "x/y", "v1.2")
    for left_to_buildah in ("busybox:1", "org/app:1", "docker.io/library/x:1", f"r:5/x@{DIGEST}",
                            "r:5/Upper:1", "r:5/x:bad/tag", "r:5/"):
        assert parse_reference(left_to_buildah) is None, left_to_buildah


def test_registry_basic_credentials_from_dockerconfigjson() -> None:
    auth = base64.b64encode(b"robot:pw").decode()
    text = json.dumps({"auths": {"https://r:5/v2/": {"auth": auth},
                                 "q:1": {"username": "u", "password": "p"}}})
    assert basic_credentials(text, "r:5") == "robot:pw"
    assert basic_credentials(text, "q:1") == "u:p"
    assert basic_credentials(text, "other:1") is None and basic_credentials("not json", "r:5") is None


def test_registry_answer_counts_only_for_our_config() -> None:
    config = "sha256:" + "cd" * 32
    body = json.dumps({"schemaVersion": 2, "config": {"digest": config}}).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    oci = {"content-type": "application/vnd.oci.image.manifest.v1+json", "docker-content-digest": digest}
    assert manifest_digest_if_config(200, oci, body, config) == digest
    assert manifest_digest_if_config(200, oci, body, "sha256:" + "ef" * 32) is None  # another image
    assert manifest_digest_if_config(404, oci, body, config) is None
    assert manifest_digest_if_config(200, {**oci, "docker-content-digest": DIGEST}, body, config) is None
    index = {"content-type": "application/vnd.oci.image.index.v1+json"}
    assert manifest_digest_if_config(200, index, body, config) is None
    assert manifest_digest_if_config(200, {**oci, "docker-content-digest": ""}, b"{", config) is None


def test_has_containers(tmp_path: Path) -> None:
    graphroot = tmp_path / "storage"
    assert not buildenv.has_containers(graphroot)  # nothing there yet
    (graphroot / "overlay-containers").mkdir(parents=True)
    assert buildenv.has_containers(graphroot)  # a containers dir without its list: cannot tell
    (graphroot / "overlay-containers" / "containers.json").write_text("[]")
    assert not buildenv.has_containers(graphroot)
    (graphroot / "overlay-containers" / "containers.json").write_text('[{"id": "abc"}]')
    assert buildenv.has_containers(graphroot)
    (graphroot / "overlay-containers" / "containers.json").write_text("[")
    assert buildenv.has_containers(graphroot)
