# shellcheck shell=bash
# Sourced by Berth's own buildpacks (bin/compile): Heroku's output conventions and ENV_DIR.

topic() { echo "-----> $*"; }
info() { echo "       $*"; }
warn() { echo " !     $*"; }
fail() {
  echo " !     $*"
  exit 1
}
indent() { sed -u 's/^/       /'; }

# ENV_DIR holds one file per config var (Heroku's way). Export them for the tools a buildpack
# runs, except names that would break the build environment itself.
export_env_dir() {
  local env_dir=$1 path name
  [ -d "$env_dir" ] || return 0
  for path in "$env_dir"/*; do
    [ -f "$path" ] || continue
    name=${path##*/}
    case "$name" in
      PATH | GIT_DIR | CPATH | CPPATH | LD_PRELOAD | LIBRARY_PATH | LD_LIBRARY_PATH | PYTHONHOME | BUILDPACK_URL | HOME) continue ;;
    esac
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    export "$name=$(cat "$path")"
  done
}
