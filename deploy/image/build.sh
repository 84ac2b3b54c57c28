#!/usr/bin/env bash
# The champion's container image, built with podman:
#   deploy/image/build.sh [BENTO_JSON] [IMAGE]
# In: BENTO_JSON, the package stage's bento.json (default reports/package/bento.json), which
# names the Bento; the Bento and its model in BentoML's store (BENTOML_HOME). Out: the image
# IMAGE (default mnist-classifier:<the Bento's version>), labelled with the model it serves,
# and IMAGE-bentoml, the image `bentoml containerize` built (its layers are the cache
# that makes the next build fast).
#
# 1. `bentoml containerize --backend podman` builds BentoML's image from the bentofile's
#    docker.base_image; extra options come from MNIST_CONTAINERIZE_OPTS (podman-sandbox.sh
#    sets them on this machine kind, where no base image can be pulled).
# 2. `podman build --squash-all -f deploy/image/Containerfile` drops what only that build
#    needed (compilers, git) and adds the labels.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BENTO_JSON="${1:-reports/package/bento.json}"
PYTHON="${PYTHON:-python3}"

field() { "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$BENTO_JSON" "$1"; }
[ -f "$BENTO_JSON" ] || { echo "no $BENTO_JSON: run the pipeline first (make run)" >&2; exit 1; }
[ "$(field applied)" = True ] || { echo "$BENTO_JSON names no Bento (built in an experiment)" >&2; exit 1; }
BENTO="$(field bento)"
IMAGE="${2:-mnist-classifier:${BENTO#*:}}"
[[ "$IMAGE" == *:* ]] || IMAGE="$IMAGE:latest"

start=$SECONDS
# shellcheck disable=SC2086  # MNIST_CONTAINERIZE_OPTS holds several options
bentoml containerize --backend podman ${MNIST_CONTAINERIZE_OPTS:-} --image-tag "$IMAGE-bentoml" "$BENTO"
containerized=$SECONDS
podman build --squash-all --quiet --build-arg "BENTO_IMAGE=$IMAGE-bentoml" \
  --label "org.opencontainers.image.title=mnist-classifier" \
  --label "org.opencontainers.image.version=${BENTO#*:}" \
  --label "mnist-mlops.bento=$BENTO" \
  --label "mnist-mlops.model=$(field model)" \
  --label "mnist-mlops.candidate=$(field candidate)" \
  --label "mnist-mlops.registry_version=$(field registry_version)" \
  --label "mnist-mlops.onnx_sha256=$(field onnx_sha256)" \
  --tag "$IMAGE" -f "$HERE/Containerfile" "$HERE" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE from $BENTO in $((SECONDS - start)) s" \
  "(containerize $((containerized - start)) s, slim $((SECONDS - containerized)) s)," \
  "$((size / 1000000)) MB"
