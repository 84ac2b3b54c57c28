#!/usr/bin/env bash
# SANDBOX WORKAROUNDS for podman on this machine kind: no Docker engine, no container
# registry to pull from, a kernel with hybrid cgroups v1, no CAP_SYS_RESOURCE, and HTTPS
# to PyPI only through this machine's own certificate authority. Everything that differs
# from what a user runs elsewhere is in this file and in sandbox-containers.conf beside it;
# docs/deployment.md shows the plain commands.
#
#   deploy/image/podman-sandbox.sh base              build the local base image (once)
#   deploy/image/podman-sandbox.sh COMMAND [ARGS]    run COMMAND (podman ..., build.sh)
#                                                    with the workarounds in force
#
# The workarounds:
# - a local base image: the bentofile's docker.base_image (python:3.11-slim) cannot be
#   pulled, so `base` builds a stand-in with debootstrap (Debian's python3.11,
#   ca-certificates) plus a pinned uv, and `podman import`s it; `bentoml containerize`
#   gets it through MNIST_CONTAINERIZE_OPTS as podman build's `--from`;
# - the build's HTTPS to PyPI: this machine's CA bundle is mounted over the base image's
#   during the build only (`--volume`), so the image keeps Debian's own;
# - CONTAINERS_CONF: runtime runc, as crun fails here ("cgroups in hybrid mode not
#   supported"), and default ulimits that `podman run` may set without CAP_SYS_RESOURCE;
# - BUILDAH_ISOLATION=chroot: the build's RUN steps without an OCI runtime. Under crun they
#   fail here; under runc they also run in OCI isolation, and chroot works with either.
# Not used: BentoML's `--opt pull=never` breaks its podman backend; podman pulls only what
# it lacks anyway, and the base image is local.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_IMAGE="${MNIST_BASE_IMAGE:-localhost/mnist-serving-base:bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
UV_VERSION=0.13.9  # BentoML's Dockerfile installs the Bento's packages with uv
PYTHON="${PYTHON:-python3}"  # a Python with pip, to fetch the uv wheel from PyPI

export CONTAINERS_CONF="$HERE/sandbox-containers.conf"
export BUILDAH_ISOLATION=chroot
export MNIST_CONTAINERIZE_OPTS="--opt from=$BASE_IMAGE --opt volume=$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"

build_base() {
  if podman image exists "$BASE_IMAGE"; then
    echo "base image $BASE_IMAGE exists (podman rmi it to rebuild)"
    return
  fi
  local start=$SECONDS
  work="$(mktemp -d /var/tmp/mnist-base.XXXXXX)"  # global: the EXIT trap removes it
  trap 'rm -rf "$work"' EXIT
  echo "building $BASE_IMAGE: debootstrap bookworm from $DEBIAN_MIRROR"
  debootstrap --variant=minbase --include=python3.11,ca-certificates \
    bookworm "$work/rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log"
    exit 1
  }
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_17_x86_64 --python-version 3.11 "uv==$UV_VERSION" -d "$work/uv"
  "$PYTHON" -m zipfile -e "$work"/uv/uv-*.whl "$work/uv/unpacked"
  install -m 755 "$work/uv/unpacked/uv-$UV_VERSION.data/scripts/uv" "$work/rootfs/usr/local/bin/uv"
  # What no image needs: downloaded packages, apt's lists, docs, translations, this host's
  # name and resolver (podman provides both at run time).
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/usr/share/{doc,man,info,locale}/* "$work"/rootfs/var/log/* \
    "$work"/rootfs/etc/resolv.conf "$work"/rootfs/etc/hostname
  # SSL_CERT_FILE: uv trusts its built-in roots unless told to read a bundle; this is
  # Debian's own bundle in the image, and this machine's during the build.
  tar -C "$work/rootfs" --numeric-owner -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV UV_NO_CACHE=1' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase bookworm: python3.11, ca-certificates, uv $UV_VERSION" \
    - "$BASE_IMAGE" >/dev/null
  echo "built $BASE_IMAGE in $((SECONDS - start)) s"
}

case "${1:-}" in
  base) build_base ;;
  "" | -h | --help) sed -n '2,10p' "$0" ;;
  *) exec "$@" ;;
esac
