# Shared by scripts/setup and scripts/test: Debian packages, the virtualenv, Docker, ZooKeeper.
# shellcheck shell=bash disable=SC2034

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"; fi
}

# apt_install PACKAGE…: installs the Debian packages that are missing.
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Debian packages Berth needs to run and to be tested.
BERTH_DEBIAN_PACKAGES=(zookeeper default-jre-headless git ca-certificates curl haproxy)
# The stack images (buildpacks/stack.py): mmdebstrap writes Debian's root filesystems; uidmap
# gives it subordinate ids when it runs as a user.
BERTH_DEBIAN_PACKAGES+=(mmdebstrap uidmap)
# Berth's image registry in Mesos mode (framework/registryd.py): distribution 2.8, and
# htpasswd (bcrypt) for its generated password.
BERTH_DEBIAN_PACKAGES+=(docker-registry apache2-utils)

# What only the tests need: busybox-static (the test image) and pebble (Let's Encrypt's test
# ACME server, with its challenge test server as DNS).
BERTH_TEST_PACKAGES=(busybox-static pebble rsyslog)

# python_for_venv: a Python ≥ 3.11 that can make virtualenvs (Debian's needs python3-venv).
python_for_venv() {
  local py
  py=$(command -v python3) || { apt_install python3 python3-venv; py=$(command -v python3); }
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "Python >= 3.11 needed; $py is older"
  if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then apt_install python3-venv; fi
  echo "$py"
}

# make_venv DIR PIP-ARGS…: creates DIR if needed and pip-installs into it.
make_venv() {
  local dir=$1; shift
  [ -x "$dir/bin/python" ] || "$(python_for_venv)" -m venv "$dir"
  local log; log=$(mktemp)
  if ! "$dir/bin/python" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; die "pip install into $dir failed"
  fi
  rm -f "$log"
  "$dir/bin/python" -c 'import berth.cli.main' || die "berth does not import from $dir"
}

# docker_answers: true when `docker info` gets an answer (as this user, else as root).
docker_answers() {
  docker info >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && as_root docker info >/dev/null 2>&1; }
}

# docker_ready [LOG-DIR]: makes sure a Docker engine answers `docker info`. Installs Debian's
# docker.io when no dockerd is on the machine (an engine installed some other way is used as it
# is), then starts it: `systemctl start docker` when systemd runs, else dockerd in its own
# session, logging to LOG-DIR/berth-dockerd.log (LOG-DIR defaults to /var/log). Waits up to
# 60 s for it to answer.
docker_ready() {
  local log=${1:-/var/log}/berth-dockerd.log
  docker_answers && return 0
  if ! command -v dockerd >/dev/null && [ ! -x /usr/sbin/dockerd ]; then apt_install docker.io; fi
  if [ -d /run/systemd/system ]; then
    say "starting Docker (systemctl start docker)"
    as_root systemctl start docker
    log="journalctl -u docker"
  else
    # If a dockerd is still starting, this one finds its pid file, logs why and exits.
    say "starting dockerd (log in $log)"
    as_root mkdir -p "$(dirname "$log")"
    # shellcheck disable=SC2016  # $1 and $PATH expand in the root shell, not here
    as_root sh -c 'PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH setsid dockerd >>"$1" 2>&1 </dev/null &' \
      sh "$log"
  fi
  for _ in $(seq 120); do
    docker_answers && return 0
    sleep 0.5
  done
  die "the Docker engine did not answer within 60 s; see $log"
}

ZK_CLASSPATH=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar
ZK_MAIN=org.apache.zookeeper.server.ZooKeeperServerMain

# zk_answers HOST PORT: true when a ZooKeeper server answers there.
zk_answers() {
  local reply
  reply=$( (exec 3<>"/dev/tcp/$1/$2" && printf srvr >&3 && timeout 2 cat <&3) 2>/dev/null) || return 1
  [[ $reply == *"Zookeeper version"* ]]
}

# zk_config DIR PORT: a standalone ZooKeeper config in DIR, bound to localhost.
zk_config() {
  mkdir -p "$1/data"
  cat >"$1/zoo.cfg" <<CFG
tickTime=2000
dataDir=$1/data
clientPort=$2
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=srvr,ruok
autopurge.snapRetainCount=5
autopurge.purgeInterval=24
CFG
}
