#!/bin/bash
# The build container's command (berth.buildpacks.slug runs it as the user `app`, uid 10000):
# runs Heroku's buildpack API — bin/detect, bin/compile BUILD_DIR CACHE_DIR ENV_DIR, bin/release
# — for the buildpacks named in BERTH_BUILDPACKS, or for the first of BERTH_DETECT whose
# bin/detect accepts the source. Writes the last buildpack's release YAML and the names used to
# $OUT. Exit 100: no buildpack detected. Nothing from the app reaches this script's code.
set -euo pipefail

BP_ROOT=/opt/berth/buildpacks
BUILD_DIR=/app
CACHE_DIR=/cache
ENV_DIR=/tmp/berth/env
OUT=/tmp/berth/out
mkdir -p "$OUT"
cd "$BUILD_DIR"

echo "-----> Building as $(id -un) (uid $(id -u)) on the $STACK stack"
if [ -f "$CACHE_DIR/.berth-cache" ]; then
  echo "-----> Using the build cache ($(du -sm "$CACHE_DIR" | cut -f1) MB, left by build $(head -c 64 "$CACHE_DIR/.berth-cache"))"
else
  echo "-----> No build cache yet: this build starts one"
fi

# The app's .profile.d scripts so far: what earlier buildpacks installed, for the next one.
profile() {
  local f
  set +u
  for f in "$BUILD_DIR"/.profile.d/*.sh; do
    if [ -r "$f" ]; then
      # shellcheck disable=SC1090
      . "$f"
    fi
  done
  set -u
}

chosen=()
if [ -n "${BERTH_BUILDPACKS:-}" ]; then
  read -ra chosen <<<"$BERTH_BUILDPACKS"
  for name in "${chosen[@]}"; do
    if ! found=$("$BP_ROOT/$name/bin/detect" "$BUILD_DIR"); then
      echo " !     The $name buildpack was asked for, but its bin/detect finds nothing to build"
      exit 1
    fi
    echo "-----> $found app (buildpack $name, as configured)"
  done
else
  for name in $BERTH_DETECT; do
    if found=$("$BP_ROOT/$name/bin/detect" "$BUILD_DIR"); then
      chosen=("$name")
      echo "-----> $found app detected"
      break
    fi
  done
  [ ${#chosen[@]} -gt 0 ] || exit 100
fi

for name in "${chosen[@]}"; do
  profile
  "$BP_ROOT/$name/bin/compile" "$BUILD_DIR" "$CACHE_DIR" "$ENV_DIR"
done
"$BP_ROOT/${chosen[-1]}/bin/release" "$BUILD_DIR" >"$OUT/release.yml"
printf '%s\n' "${chosen[@]}" >"$OUT/buildpacks"
printf '%s\n' "${SOURCE_VERSION:0:12}" >"$CACHE_DIR/.berth-cache"
