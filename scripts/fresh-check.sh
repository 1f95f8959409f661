#!/usr/bin/env bash
# `make fresh-check`: the README's two commands as a new user meets them, on a fresh
# Debian 12 with nothing but the README's prerequisites (make, curl, git, a C linker,
# Rust). It builds a debootstrap chroot, clones the repository's HEAD into it, downloads
# what the commands will install (Debian packages, crates), then runs, cut off from every
# network in a network namespace of its own (so its PostgreSQL and RabbitMQ use the
# standard ports on their own loopback and never meet the machine's):
#   `make run`   until it is up; then a callback is stored (checked with the README's
#                analyst psql line), the management UI answers, and Ctrl-C stops it all;
#   `make test`  to its totals.
# The Rust toolchain is the machine's own, mounted read-only (rustup cannot be fetched
# here). Needs root. Everything is removed afterwards (FRESH_KEEP=1 keeps the folder).
#
# Settings: FRESH_DIR (default target/fresh-check), FRESH_MIRROR (the machine's Debian
# mirror), FRESH_SUITE (bookworm), FRESH_KEEP.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

say() { printf '[fresh-check] %s\n' "$*"; }
fail() { printf '[fresh-check] FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "needs root (debootstrap, chroot, network namespaces)"
for tool in ip unshare chroot git; do
  command -v "$tool" >/dev/null || fail "$tool is missing"
done
if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap (Debian package)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[ -d "$rustup_home" ] && [ -x "$cargo_bin/cargo" ] || fail "no rustup toolchain at $rustup_home and $cargo_bin"
toolchain=$(rustup default 2>/dev/null | awk '{print $1}')

dir=$(realpath -m "${FRESH_DIR:-target/fresh-check}")
root=$dir/rootfs
suite=${FRESH_SUITE:-bookworm}
machine_mirror() { # the first Debian archive in the machine's apt sources
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | awk '{print $2}' | head -n 1 || true
}
mirror=${FRESH_MIRROR:-$(machine_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}
netns=lastseen-fresh-$$
summary=$repo/target/fresh-check-summary.txt

cleanup() {
  ip netns del "$netns" 2>/dev/null || true
  # Mounts live in private mount namespaces and vanish with them; make sure anyway.
  if [ -d "$root" ]; then
    grep -o " $root[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  if [ "${FRESH_KEEP:-0}" = 1 ]; then
    say "kept $dir (FRESH_KEEP=1)"
  else
    rm -rf "$dir"
  fi
}
trap cleanup EXIT

# Runs a bash script as root inside the chroot, in private mount, PID and UTS namespaces
# (everything it starts dies with it), with the machine's Rust toolchain mounted
# read-only. With "offline" it also gets a network namespace with only a loopback.
in_chroot() {
  local mode=$1 script=$2 net=()
  if [ "$mode" = offline ]; then net=(ip netns exec "$netns"); fi
  "${net[@]}" unshare --mount --pid --uts --fork --propagation private bash -euo pipefail -c '
    root=$1 rustup_home=$2 cargo_bin=$3
    mount --rbind /dev "$root/dev"
    mount -t tmpfs shm "$root/dev/shm" 2>/dev/null || true
    mount -t proc proc "$root/proc"
    mount -t sysfs sys "$root/sys"
    mkdir -p "$root/root/.rustup" "$root/root/.cargo/bin"
    mount --bind "$rustup_home" "$root/root/.rustup"
    mount -o remount,bind,ro "$root/root/.rustup"
    mount --bind "$cargo_bin" "$root/root/.cargo/bin"
    mount -o remount,bind,ro "$root/root/.cargo/bin"
    echo fresh >/proc/sys/kernel/hostname
    exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
      PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      RUSTUP_TOOLCHAIN="$4" /bin/bash -euo pipefail -c "$5"
  ' fresh-check "$root" "$rustup_home" "$cargo_bin" "$toolchain" "$script"
}

elapsed() { echo $(( $(date +%s) - $1 )); }

mkdir -p "$dir"
[ ! -e "$root" ] || fail "$root exists (a check still running, or one kept with FRESH_KEEP=1): remove it first"
t=$(date +%s)
say "debootstrap $suite (minbase) from $mirror into $root"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 \
  || fail "debootstrap failed; see $dir/debootstrap.log (FRESH_KEEP=1 keeps it)"
t_debootstrap=$(elapsed "$t")
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's own extra CA certificates (such as a TLS-inspecting proxy's): what the
# network needs, not what the project needs.
mkdir -p "$root/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
printf '127.0.0.1 localhost fresh\n::1 localhost ip6-localhost\n' >"$root/etc/hosts"
echo fresh >"$root/etc/hostname"

t=$(date +%s)
say "the user's prerequisites (make, curl, git, a C linker), the repository, and downloads"
git clone -q "$repo" "$root/root/lastseen"
in_chroot online '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq make curl git ca-certificates gcc libc6-dev >/dev/null
  update-ca-certificates >/dev/null 2>&1
  # What `make run` will install, downloaded now: the services and tests run offline.
  apt-get install -y -qq --download-only postgresql rabbitmq-server >/dev/null
  cd /root/lastseen && cargo fetch --locked -q
' >"$dir/prepare.log" 2>&1 || { cat "$dir/prepare.log"; fail "preparing the chroot"; }
t_prepare=$(elapsed "$t")

ip netns add "$netns"
ip netns exec "$netns" ip link set lo up

say "in the chroot, offline: make run (installs the services, builds), checks, Ctrl-C, make test"
t=$(date +%s)
set +e
in_chroot offline '
  export CARGO_NET_OFFLINE=true
  cd /root/lastseen
  start=$(date +%s)
  # As from a terminal: its own process group, and SIGINT not ignored (a non-interactive
  # shell starts background jobs with SIGINT ignored, which would make Ctrl-C a no-op).
  setsid env --default-signal=INT make run >/root/run.log 2>&1 &
  make_pid=$!
  for ((i = 0; i < 1800; i++)); do
    grep -q "Ctrl-C stops everything" /root/run.log && break
    kill -0 "$make_pid" 2>/dev/null || { echo "make run exited early:"; tail -n 40 /root/run.log; exit 1; }
    sleep 1
  done
  grep -q "Ctrl-C stops everything" /root/run.log || { echo "make run not up after 30 min"; tail -n 40 /root/run.log; exit 1; }
  echo "run_up_secs=$(( $(date +%s) - start ))"

  answer=$(curl -s -w " %{http_code}" -XPOST -H "content-type: application/json" \
    -d "{\"object_ids\":[424242]}" http://127.0.0.1:9090/callback) || true
  echo "callback_answer=$answer"
  [ "${answer##* }" = 202 ] || { echo "the callback was not accepted"; exit 1; }
  stored=""
  for ((i = 0; i < 30; i++)); do
    stored=$(psql postgres://analyst:analyst@127.0.0.1:5432/lastseen -Atc "SELECT id FROM objects WHERE id = 424242" 2>&1) || true
    [ "$stored" = 424242 ] && break
    sleep 1
  done
  echo "analyst_line_sees=${stored:-nothing}"
  [ "$stored" = 424242 ] || { echo "id 424242 not stored within 30 s"; tail -n 20 target/run/*.log; exit 1; }
  ui=$(curl -s -o /dev/null -w "%{http_code}" http://127.0.0.1:15672/)
  api=$(curl -s -u guest:guest http://127.0.0.1:15672/api/overview | grep -o "\"rabbitmq_version\":\"[^\"]*\"" || true)
  echo "management_ui=$ui $api"
  [ "$ui" = 200 ] && [ -n "$api" ] || { echo "the management UI does not answer"; exit 1; }

  kill -INT -- "-$make_pid"
  for ((i = 0; i < 60; i++)); do kill -0 "$make_pid" 2>/dev/null || break; sleep 1; done
  grep -q "^stopped\.$" /root/run.log || { echo "Ctrl-C did not stop make run cleanly"; tail -n 20 /root/run.log; exit 1; }
  left=$( (grep -l "target/releas[e]/" /proc/[0-9]*/cmdline 2>/dev/null || true) | wc -l)
  echo "ctrl_c=stopped, components_left=$left"
  [ "$left" = 0 ] || exit 1

  start=$(date +%s)
  make test >/root/test.log 2>&1 && code=0 || code=$?
  echo "test_secs=$(( $(date +%s) - start ))"
  echo "test_exit=$code"
  echo "test_totals=$(tail -n 1 target/test-summary.txt 2>/dev/null || echo none)"
  [ "$code" = 0 ] || { grep -E "^test .*FAILED|panicked" /root/test.log | head -n 20; exit 1; }
' | tee "$dir/check.log"
code=${PIPESTATUS[0]}
set -e
t_check=$(elapsed "$t")

get() { grep -m1 "^$1=" "$dir/check.log" | cut -d= -f2-; }
{
  echo "fresh-check: Debian $suite chroot, offline network namespace"
  echo "  debootstrap                 ${t_debootstrap} s"
  echo "  prerequisites + downloads   ${t_prepare} s"
  echo "  make run until up           $(get run_up_secs) s (installs PostgreSQL and RabbitMQ, release build)"
  echo "  callback                    $(get callback_answer)"
  echo "  analyst psql line sees id   $(get analyst_line_sees)"
  echo "  management UI               $(get management_ui)"
  echo "  Ctrl-C                      $(get ctrl_c)"
  echo "  make test                   $(get test_secs) s, exit $(get test_exit)"
  echo "  $(get test_totals)"
  echo "  whole check                 $(( t_debootstrap + t_prepare + t_check )) s"
} | tee "$summary"
if [ "$code" != 0 ]; then
  kept=$repo/target/fresh-check-logs
  rm -rf "$kept" && mkdir -p "$kept"
  for log in run.log test.log; do
    [ -f "$root/root/$log" ] && { echo "--- last lines of $log"; tail -n 30 "$root/root/$log"; cp "$root/root/$log" "$kept/"; }
  done
  cp -r "$root/root/lastseen/target/run" "$kept/components" 2>/dev/null || true
  fail "see above; the logs are kept in $kept"
fi
say "passed"
