#!/usr/bin/env bash
# Installs what the build needs and a fresh Debian machine may lack:
# clang and libclang-dev (RocksDB's Rust bindings are generated with
# bindgen, which loads libclang). Idempotent: does nothing when present.
set -euo pipefail
missing=()
for pkg in clang libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "installing ${missing[*]} (needed to build RocksDB bindings)" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
