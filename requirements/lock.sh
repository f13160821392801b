#!/bin/sh
# Regenerate requirements/*.txt (pinned dependencies of the images) with Docker, inside the base
# image itself, so that environment markers resolve as they do in `docker build`.
#   requirements/lock.sh                      (PYTHON_IMAGE=python:3.11-slim by default)
set -eu
cd "$(dirname "$0")/.."
docker run --rm -v "$PWD:/src:ro" -v "$PWD/requirements:/out" -w /tmp \
  -e PIP_DISABLE_PIP_VERSION_CHECK=1 -e PIP_NO_CACHE_DIR=1 "${PYTHON_IMAGE:-python:3.11-slim}" \
  sh -c 'pip install --quiet --upgrade pip && python /src/requirements/lock.py /out /src'
