#!/usr/bin/env bash
# Builds the foo-proxy and foo-server container images in two steps: the
# static binaries with cargo on this host (no Rust image can be pulled here),
# then the images from a small staged context (Dockerfile at the top).
#
#   contrib/container/build.sh              # localhost/foo-proxy:latest, localhost/foo-server:latest
#   FOO_IMAGE_TAG=test contrib/container/build.sh
#   CONTAINER_ENGINE=docker contrib/container/build.sh
#
# Prints the two image names on stdout, one a line; everything else goes to
# stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."

engine=${CONTAINER_ENGINE:-podman}
tag=${FOO_IMAGE_TAG:-latest}
triple=$(rustc -vV | sed -n 's/^host: //p')

# Static glibc: no shared object to copy into the image. `--target` keeps the
# static flag away from build scripts and proc macros, and these artifacts
# apart from the dynamic ones in target/dist.
RUSTFLAGS="-C target-feature=+crt-static" "${CARGO:-cargo}" build --locked --profile dist \
  --target "$triple" --bin foo-proxy --bin foo-server >&2
# Wherever cargo puts its output (CARGO_TARGET_DIR, build.target-dir).
target_dir=$("${CARGO:-cargo}" metadata --format-version 1 --no-deps \
  | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
bins="$target_dir/$triple/dist"

# A context of its own per run: two builds at once (tests) do not share one.
mkdir -p "$target_dir/container"
context=$(mktemp -d "$target_dir/container/context.XXXXXX")
trap 'rm -rf "$context"' EXIT
mkdir "$context/data"
cp -R contrib/container/rootfs/etc "$context/etc"
cp "$bins/foo-proxy" "$bins/foo-server" "$context/"

format=()
case "$(basename "$engine")" in
  podman | buildah) format=(--format docker) ;; # keeps HEALTHCHECK
esac
for image in foo-server foo-proxy; do
  "$engine" build "${format[@]}" --target "$image" -t "localhost/$image:$tag" \
    -f Dockerfile "$context" >&2
  echo "localhost/$image:$tag"
done
