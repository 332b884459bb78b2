"""The project's own images, built offline with buildah: a Debian base, the builder and the operator.

    python -m stagefleet.images [--push REGISTRY] [--cache-dir DIR]      (scripts/images wraps it)

1. base: Debian bookworm from mmdebstrap (`--mode=root --variant=minbase`) with the machine's own apt
   sources (read from /etc/apt at run time, never written anywhere else), made an image by
   `buildah from scratch` + `buildah add`.
2. builder: builder-image/Dockerfile, 3. operator: operator-image/Dockerfile, both `FROM ${BASE}` with
   BASE the image of step 1. Their context is a directory of wheels built on the host (`pip wheel`, the
   host's pip configuration), so the builds need no PyPI; the builder's wheels lack the "operator" extra.

Everything is cached by content under ~/.cache/stagefleet/images (or $XDG_CACHE_HOME/stagefleet/images):
the base tarball by (suite, apt sources, packages, mmdebstrap options), the wheels by the package source,
each image as an OCI archive by its Dockerfile, its context and its base. A run whose inputs did not change
only copies the archives into the registry. `ensure_images(registry_host)` is what test fixtures call.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from stagefleet import __version__, buildenv

SUITE = "bookworm"
#: The Python of Debian bookworm: compiled wheels made on the host must match it.
IMAGE_PYTHON = (3, 11)
BASE_PACKAGES: tuple[str, ...] = ()
MMDEBSTRAP_HOOKS = Path("/usr/share/mmdebstrap/hooks/merged-usr")
#: Options of mmdebstrap besides mode/variant: merged /usr the way Debian's own images are made (without
#: the usrmerge package, which pulls in perl), and no documentation, manual pages or translations, also
#: for the packages installed later (the dpkg options stay in the image, as in debian:bookworm-slim).
MMDEBSTRAP_OPTIONS = (
    "--mode=root",
    "--variant=minbase",
    "--format=tar",
    f"--hook-dir={MMDEBSTRAP_HOOKS}",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOCAL = "localhost"  # names in the build storage
KEEP = 3  # cache entries of each kind kept (see ImageBuilder.prune)
SOURCE_SKIP = ("__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache")


class ImagesError(RuntimeError):
    """An image could not be built or pushed."""


# ------------------------------------------------------------------------------------------ pure helpers


@dataclass(frozen=True)
class AptSource:
    """One apt source entry (deb822 stanza or one-line), options such as signed-by dropped."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822(text: str) -> list[AptSource]:
    """Pure: a `*.sources` file (deb822 stanzas) → its enabled entries."""
    found: list[AptSource] = []
    for stanza in _stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        found.append(AptSource(tuple(stanza.get("types", "").split()), tuple(stanza.get("uris", "").split()),
                               tuple(stanza.get("suites", "").split()),
                               tuple(stanza.get("components", "").split())))
    return found


def _stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key: str | None = None
    for raw in [*text.splitlines(), ""]:
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if fields:
                yield fields
            fields, key = {}, None
        elif raw[0] in " \t" and key is not None:
            fields[key] += " " + raw.strip()
        else:
            name, _, value = raw.partition(":")
            key = name.strip().lower()
            fields[key] = value.strip()


def parse_sources_list(text: str) -> list[AptSource]:
    """Pure: one-line `sources.list` text → its entries (`deb [opts] URI SUITE COMPONENT...`)."""
    found: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.startswith("["):
            rest = rest.partition("]")[2].strip()
        parts = rest.split()
        if len(parts) >= 2:
            found.append(AptSource((kind,), (parts[0],), (parts[1],), tuple(parts[2:])))
    return found


def mirror_lines(sources: Iterable[AptSource], suite: str = SUITE) -> list[str]:
    """Pure: the `deb URI SUITE COMPONENTS` lines for mmdebstrap: binary entries of `suite` and its
    family (`-updates`, `-security`, ...), in the machine's order, without duplicates."""
    lines: list[str] = []
    for src in sources:
        if "deb" not in src.types:
            continue
        for uri in src.uris:
            for s in src.suites:
                if s == suite or s.startswith(suite + "-") or s.startswith(suite + "/"):
                    line = " ".join(["deb", uri, s, *(src.components or ("main",))])
                    if line not in lines:
                        lines.append(line)
    return lines


def digest_of(parts: Iterable[str | bytes]) -> str:
    """Pure: sha256 (hex) over length-prefixed parts, so no two part lists collide."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def base_key(suite: str, lines: Sequence[str], packages: Sequence[str], options: Sequence[str]) -> str:
    """Pure: the cache key of the base tarball."""
    return digest_of(["base", suite, json.dumps(list(lines)), json.dumps(sorted(packages)),
                      json.dumps(list(options))])


def tree_digest(root: Path, skip: Sequence[str] = SOURCE_SKIP) -> str:
    """sha256 over a directory tree: every path (sorted), its kind, exec bit and content (or link)."""
    parts: list[str | bytes] = []
    for path in sorted(_walk(root, skip)):
        rel = path.relative_to(root).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            parts += ["l", rel, os.readlink(path)]
        elif stat.S_ISREG(st.st_mode):
            parts += ["x" if st.st_mode & 0o111 else "f", rel, path.read_bytes()]
        elif stat.S_ISDIR(st.st_mode):
            parts += ["d", rel]
    return digest_of(parts)


def _walk(root: Path, skip: Sequence[str]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
        for name in dirnames + filenames:
            if not name.endswith(".pyc"):
                yield Path(dirpath) / name


def image_key(dockerfile: bytes, context_digest: str, base: str, extra: Sequence[str] = ()) -> str:
    """Pure: the cache key of an image built from a Dockerfile: its text, its context and its base."""
    return digest_of(["image", dockerfile, context_digest, base, *extra])


def tag_for(prefix: str, key: str) -> str:
    return f"{prefix}-{key[:16]}"


def manifest_size(manifest: Mapping[str, object]) -> int:
    """Pure: what a pull transfers: the config plus every (compressed) layer blob."""
    total = 0
    config = manifest.get("config")
    if isinstance(config, dict):
        total += int(config.get("size", 0))
    layers = manifest.get("layers")
    for layer in layers if isinstance(layers, list) else ():
        if isinstance(layer, dict):
            total += int(layer.get("size", 0))
    return total


# ------------------------------------------------------------------------------------------ results


@dataclass(frozen=True)
class Images:
    """The images in a registry, each pinned by digest (`HOST/REPO@sha256:...`)."""

    base: str
    builder: str
    operator: str


@dataclass(frozen=True)
class Archive:
    """One image as an OCI archive in the cache, and what building it cost."""

    name: str
    repo: str
    tag: str
    path: Path
    size: int  # compressed: config + layers
    build_seconds: float
    cached: bool  # found in the cache by this run

    @property
    def record(self) -> Path:
        return self.path.with_suffix(".json")


@dataclass(frozen=True)
class Pushed:
    archive: Archive
    ref: str  # HOST/REPO:TAG
    digest: str
    copy_seconds: float

    @property
    def pinned(self) -> str:
        return f"{self.ref.rpartition(':')[0]}@{self.digest}"

    def line(self) -> str:
        a = self.archive
        how = "cached, built in" if a.cached else "built in"
        return (f"{a.name:<9} {self.pinned}  {a.size / 1e6:.1f} MB compressed  {how} {a.build_seconds:.1f} s"
                f"  copied in {self.copy_seconds:.1f} s")


# ------------------------------------------------------------------------------------------ the runner


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "stagefleet" / "images"


def repo_root() -> Path:
    """The source checkout this module lives in (the Dockerfiles and the package source come from it)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "builder-image" / "Dockerfile").is_file() or not (root / "pyproject.toml").is_file():
        raise ImagesError(f"{root} is not a stagefleet source checkout: images are built from one")
    return root


def machine_sources(etc: Path = Path("/etc/apt"), suite: str = SUITE) -> list[str]:
    """The machine's apt sources for `suite` as mmdebstrap mirror lines."""
    sources: list[AptSource] = []
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        sources += parse_deb822(f.read_text())
    for f in [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]:
        if f.is_file():
            sources += parse_sources_list(f.read_text())
    lines = mirror_lines(sources, suite)
    if not lines:
        raise ImagesError(f"no apt source for {suite} in {etc}/sources.list(.d): mmdebstrap needs a mirror")
    return lines


def _tail(text: str, n: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


@dataclass(frozen=True)
class ImageSpec:
    name: str
    repo: str
    dockerfile: str  # relative to the repository root
    requirement: str  # extras of the stagefleet wheel that its context's wheels cover, e.g. "[operator]"


BUILDER = ImageSpec("builder", "stagefleet/builder", "builder-image/Dockerfile", "")
OPERATOR = ImageSpec("operator", "stagefleet/operator", "operator-image/Dockerfile", "[operator]")
BASE_REPO = "stagefleet/debian"


class ImageBuilder:
    """Builds (or finds in the cache) the three archives and copies them into registries."""

    def __init__(self, *, cache_dir: Path | None = None, root: Path | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.cache = cache_dir or default_cache_dir()
        self.root = root or repo_root()
        self.log = log or (lambda m: print(f"images: {m}", file=sys.stderr, flush=True))
        self._storage: tuple[Path, dict[str, str]] | None = None
        self._loaded: set[str] = set()
        # The storage is made, and the base loaded into it, once for the two image builds (`build_all`).
        self._lock = threading.RLock()

    # -- buildah storage, made only when something must be built
    def storage_env(self) -> dict[str, str]:
        with self._lock:
            if self._storage is None:
                if os.geteuid() != 0:
                    raise ImagesError("building the images needs root (mmdebstrap --mode=root, buildah); "
                                      "a run with everything cached does not")
                self.cache.mkdir(parents=True, exist_ok=True)
                root = Path(tempfile.mkdtemp(prefix="storage-", dir=self.cache))
                self._storage = (root, buildenv.prepare(root))
            return self._storage[1]

    def close(self) -> None:
        if self._storage is not None:
            root, env = self._storage
            self._storage = None
            buildenv.cleanup(root, env)

    def run(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log_name: str | None = None,
            input_text: str | None = None) -> str:
        """Run a command; its output goes to logs/<log_name>.log when named; raise with its tail."""
        env = dict(os.environ if env is None else env)
        if log_name is None:
            proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, input=input_text,
                                  check=False)
            out = proc.stdout
            tail = proc.stderr or proc.stdout
        else:
            logs = self.cache / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            path = logs / f"{log_name}.log"
            with open(path, "w") as f:
                proc = subprocess.run(list(argv), env=env, stdout=f, stderr=subprocess.STDOUT, text=True,
                                      input=input_text, check=False)
            out = tail = path.read_text(errors="replace")
        if proc.returncode != 0:
            where = f" (log: {self.cache / 'logs' / f'{log_name}.log'})" if log_name else ""
            raise ImagesError(f"{' '.join(argv[:3])} failed{where}:\n{_tail(tail)}")
        return out

    # -- the archives
    def _cached(self, name: str, repo: str, tag: str) -> Archive | None:
        path = self.cache / f"{name}-{tag}.oci.tar"
        record = path.with_suffix(".json")
        if not (path.is_file() and record.is_file()):
            return None
        data = json.loads(record.read_text())
        os.utime(path)  # last used: what `prune` keeps
        return Archive(name, repo, tag, path, int(data["size"]), float(data["build_seconds"]), True)

    def _save(self, name: str, repo: str, tag: str, started: float, earlier: float = 0.0) -> Archive:
        """Push the built `LOCAL/repo:tag` into its OCI archive in the cache (atomically) with its record;
        its build time is from `started` (monotonic) until the archive is written, plus `earlier`."""
        env = self.storage_env()
        path = self.cache / f"{name}-{tag}.oci.tar"
        part = path.with_name(path.name + ".part")
        part.unlink(missing_ok=True)
        local = f"{LOCAL}/{repo}:{tag}"
        self.run(["buildah", "push", "--quiet", local, f"oci-archive:{part}:{repo}:{tag}"], env=env)
        manifest = json.loads(self.run(["skopeo", "inspect", "--raw", f"oci-archive:{part}"]))
        size = manifest_size(manifest)
        part.rename(path)
        seconds = time.monotonic() - started + earlier
        path.with_suffix(".json").write_text(json.dumps({
            "name": name, "repo": repo, "tag": tag, "size": size, "build_seconds": round(seconds, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1) + "\n")
        self._loaded.add(local)
        return Archive(name, repo, tag, path, size, seconds, False)

    def base_tarball(self) -> tuple[str, Path, float]:
        """mmdebstrap's tarball for the machine's sources (cached by its inputs): key, path, seconds."""
        lines = machine_sources()
        options = [o for o in MMDEBSTRAP_OPTIONS if MMDEBSTRAP_HOOKS.is_dir() or "--hook-dir" not in o]
        key = base_key(SUITE, lines, BASE_PACKAGES, options)
        path = self.cache / f"base-{SUITE}-{key[:16]}.tar"
        record = path.with_suffix(".json")
        if path.is_file() and record.is_file():
            os.utime(path)
            return key, path, float(json.loads(record.read_text())["seconds"])
        if os.geteuid() != 0:
            raise ImagesError("mmdebstrap --mode=root needs root")
        self.cache.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        include = [f"--include={','.join(BASE_PACKAGES)}"] if BASE_PACKAGES else []
        self.log(f"mmdebstrap {SUITE} ({len(lines)} apt sources of this machine)")
        t0 = time.monotonic()
        self.run(["mmdebstrap", *options, *include, SUITE, str(part), *lines],
                 log_name=f"mmdebstrap-{key[:16]}")
        seconds = time.monotonic() - t0
        part.rename(path)
        record.write_text(json.dumps({"suite": SUITE, "seconds": round(seconds, 1)}) + "\n")
        return key, path, seconds

    def base(self) -> Archive:
        key, tarball, tar_seconds = self.base_tarball()
        config = ["--env", f"PATH={BASE_PATH}", "--cmd", "/bin/bash",
                  "--label", f"io.stagefleet.base={SUITE}"]
        tag = tag_for(SUITE, digest_of(["base-image", key, *config]))
        found = self._cached("base", BASE_REPO, tag)
        if found is not None:
            return found
        env = self.storage_env()
        self.log(f"base image {BASE_REPO}:{tag}")
        t0 = time.monotonic()
        ctr = self.run(["buildah", "from", "scratch"], env=env).strip()
        try:
            self.run(["buildah", "add", "--quiet", ctr, str(tarball), "/"], env=env)
            self.run(["buildah", "config", *config, ctr], env=env)
            self.run(["buildah", "commit", "--quiet", "--rm", ctr, f"{LOCAL}/{BASE_REPO}:{tag}"], env=env)
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], env=env, capture_output=True, check=False)
            raise
        return self._save("base", BASE_REPO, tag, t0, tar_seconds)

    def wheels(self) -> tuple[Path, Path]:
        """The builder's and the operator's build contexts (each `wheels/` only), cached by the source."""
        src_key = digest_of(["wheels", tree_digest(self.root / "operator"),
                             (self.root / "pyproject.toml").read_bytes(),
                             (self.root / "README.md").read_bytes()])
        out = self.cache / f"wheels-{src_key[:16]}"
        contexts = (out / BUILDER.name, out / OPERATOR.name)
        if out.is_dir():
            os.utime(out)
            return contexts
        if sys.version_info[:2] != IMAGE_PYTHON:
            raise ImagesError(f"wheels for the images' Python {IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]} (Debian "
                              f"{SUITE}) need the same Python here, not {sys.version.split()[0]}")
        self.cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="wheels-", dir=self.cache))
        try:
            src = tmp / "src"  # a copy: building in the checkout would leave build/ and egg-info there
            shutil.copytree(self.root / "operator", src / "operator",
                            ignore=shutil.ignore_patterns(*SOURCE_SKIP, "*.pyc", "*.egg-info"))
            for name in ("pyproject.toml", "README.md"):
                shutil.copy2(self.root / name, src / name)
            pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check"]
            self.log("wheels: stagefleet and its dependencies (pip wheel)")
            t0 = time.monotonic()
            self.run([*pip, "--no-deps", "--wheel-dir", str(tmp / "project"), str(src)],
                     log_name="pip-wheel-project")
            (wheel,) = (tmp / "project").glob("stagefleet-*.whl")
            for spec in (BUILDER, OPERATOR):
                self.run([*pip, "--wheel-dir", str(tmp / spec.name / "wheels"), f"{wheel}{spec.requirement}"],
                         log_name=f"pip-wheel-{spec.name}")
            shutil.rmtree(src)
            tmp.chmod(0o755)
            tmp.rename(out)
            self.log(f"wheels: {time.monotonic() - t0:.1f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return contexts

    def _load(self, archive: Archive) -> str:
        """The archive's image in the build storage; its local name."""
        local = f"{LOCAL}/{archive.repo}:{archive.tag}"
        with self._lock:
            if local not in self._loaded:
                self.run(["skopeo", "copy", "--quiet", f"oci-archive:{archive.path}",
                          f"containers-storage:{local}"], env=self.storage_env())
                self._loaded.add(local)
        return local

    def image(self, spec: ImageSpec, context: Path, base: Archive) -> Archive:
        dockerfile = self.root / spec.dockerfile
        key = image_key(dockerfile.read_bytes(), tree_digest(context), base.tag)
        tag = tag_for(__version__, key)
        found = self._cached(spec.name, spec.repo, tag)
        if found is not None:
            return found
        env = self.storage_env()
        base_ref = self._load(base)
        self.log(f"{spec.name} image {spec.repo}:{tag} (FROM {base_ref})")
        t0 = time.monotonic()
        self.run(["buildah", "build", "--pull=never", "--file", str(dockerfile),
                  "--build-arg", f"BASE={base_ref}", "--tag", f"{LOCAL}/{spec.repo}:{tag}", str(context)],
                 env=env, log_name=f"{spec.name}-{tag}")
        return self._save(spec.name, spec.repo, tag, t0)

    def build_all(self) -> list[Archive]:
        """Two at a time, as they wait on different things (mmdebstrap and pip on the network and disk,
        the two images on their own steps): the wheels beside the base, then both images (each FROM the
        base) beside each other. A cold build takes about the longest of each pair instead of the sum."""
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="images") as pool:
            wheels = pool.submit(self.wheels)
            base = self.base()
            builder_ctx, operator_ctx = wheels.result()
            builder = pool.submit(self.image, BUILDER, builder_ctx, base)
            operator = self.image(OPERATOR, operator_ctx, base)
            archives = [base, builder.result(), operator]
        self.prune()
        return archives

    def prune(self, keep: int = KEEP) -> None:
        """Keep the `keep` most recently used entries of each kind (every source change of the checkout
        makes new wheels and images); the ones this run used are the most recent."""
        kinds = [f"{n}-*.oci.tar" for n in ("base", BUILDER.name, OPERATOR.name)]
        for pattern, n in [*((k, keep) for k in kinds), (f"base-{SUITE}-*[0-9a-f].tar", keep),
                           ("wheels-*", keep), ("logs/*.log", 4 * keep)]:
            entries = sorted(self.cache.glob(pattern), key=lambda q: q.stat().st_mtime, reverse=True)
            for old in entries[n:]:
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
                    old.with_suffix(".json").unlink(missing_ok=True)

    def push(self, archive: Archive, registry_host: str) -> Pushed:
        """Copy the archive into `registry_host` (plain HTTP); the digest is the archive's manifest's."""
        ref = f"{registry_host}/{archive.repo}:{archive.tag}"
        with tempfile.TemporaryDirectory(prefix="digest-") as tmp:
            digestfile = Path(tmp) / "digest"
            t0 = time.monotonic()
            self.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digestfile),
                      f"oci-archive:{archive.path}", f"docker://{ref}"])
            seconds = time.monotonic() - t0
            digest = digestfile.read_text().strip()
        return Pushed(archive, ref, digest, seconds)


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build per cache at a time (test workers may all ask at once)."""
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_and_push(registry_host: str | None, *, cache_dir: Path | None = None,
                   log: Callable[[str], None] | None = None) -> tuple[list[Archive], list[Pushed]]:
    builder = ImageBuilder(cache_dir=cache_dir, log=log)
    with _locked(builder.cache):
        try:
            archives = builder.build_all()
        finally:
            builder.close()
        pushed = [builder.push(a, registry_host) for a in archives] if registry_host else []
    return archives, pushed


def ensure_images(registry_host: str, *, cache_dir: Path | None = None,
                  log: Callable[[str], None] | None = None) -> Images:
    """The base, builder and operator images in `registry_host` (HOST:PORT, plain HTTP), pinned by digest:
    built on the first call on a machine (about two minutes), copied from the cache afterwards."""
    _, pushed = build_and_push(registry_host, cache_dir=cache_dir, log=log)
    by_name = {p.archive.name: p.pinned for p in pushed}
    return Images(base=by_name["base"], builder=by_name["builder"], operator=by_name["operator"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/images",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--push", metavar="REGISTRY", help="copy the images into this registry (HOST:PORT, "
                        "plain HTTP), e.g. a stagefleet.localregistry one")
    parser.add_argument("--cache-dir", type=Path, help=f"default: {default_cache_dir()}")
    args = parser.parse_args(argv)
    try:
        archives, pushed = build_and_push(args.push, cache_dir=args.cache_dir)
    except ImagesError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    if pushed:
        for p in pushed:
            print(p.line())
    else:
        for a in archives:
            how = "cached, built in" if a.cached else "built in"
            print(f"{a.name:<9} {a.path}  {a.size / 1e6:.1f} MB compressed  {how} {a.build_seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
