#!/usr/bin/env bash
# Puts the LLVM 23.1 that burn's CUDA backend builds against (cubecl-llvm, through
# tracel-llvm-bundler 23.1.0-4) where the bundler looks for it, from PyPI only: the bundler
# itself would download it from GitHub, which the package registries do not mirror.
# PyPI's mlc-llvm-static ships the same layout (bin/llvm-config, include/, static lib/*.a);
# its -extra-targets wheel adds NVPTX. Idempotent: does nothing when already installed.
#   scripts/install-llvm.sh && cargo build --release --features cuda
set -euo pipefail

version=23.1.1.post0
dest="${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-23.1.0-4"
marker="$dest/.tracel-llvm-installed"

if [ -e "$marker" ]; then
  echo "LLVM for the CUDA build is already in $dest"
  exit 0
fi
case "$(uname -m)" in
  x86_64) platform=manylinux_2_28_x86_64 ;;
  aarch64) platform=manylinux_2_28_aarch64 ;;
  *) echo "install-llvm.sh: no LLVM wheel for $(uname -m)" >&2; exit 1 ;;
esac

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "downloading mlc-llvm-static $version (about 90 MB) from PyPI"
python3 -m pip download --quiet --no-deps --only-binary=:all: --platform "$platform" -d "$tmp" \
  "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
for wheel in "$tmp"/*.whl; do
  python3 -m zipfile -e "$wheel" "$tmp/unpacked"
done

# Build the folder beside its final place and move it in whole, so an interrupted run never
# leaves a half-filled folder that the bundler would take for an installation.
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
cp -a "$tmp/unpacked/mlc_llvm_static/static/." "$dest.partial/"
chmod +x "$dest.partial/bin/"*
"$dest.partial/bin/llvm-config" --version >/dev/null
touch "$dest.partial/.tracel-llvm-installed"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "LLVM $("$dest/bin/llvm-config" --version) installed in $dest"
