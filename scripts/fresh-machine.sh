#!/usr/bin/env bash
# Proves the README's promise on a machine like a new user's: builds a clean
# Debian 12 root with mmdebstrap (minbase plus what a new machine of this kind
# ships) and runs inside it, as a new user would: scripts/setup.sh, the
# release build, the Debian package (installed, verified and purged), `pnlb
# check` on every example config, and the tests that need no lab (unit,
# property, BPF fixtures). A package this machine has but setup.sh does not
# install fails here.
#
# What the root shares with this machine, and only this: the Rust toolchain
# (read-only), cargo's download cache, and the CA bundle of this workplace's
# TLS proxy. The root is built fresh on every run and removed at the end.
# The source is the checkout's tracked files as they are in the work tree:
# what `git clone` gives, plus uncommitted edits; untracked files stay out.
#
# Run as root. Keep the root with PNLB_FRESH_KEEP=1 (its path is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" -ne 0 ]; then
    echo "fresh-machine: run as root (mmdebstrap, chroot and BPF need it)" >&2
    exit 1
fi

# What a new machine of this kind ships besides minbase.
base_packages=gcc,libc6-dev,git,python3,ca-certificates,curl,iproute2

step_started=$SECONDS
step() {
    echo "fresh-machine: [$((SECONDS - step_started))s] $*"
}

if ! command -v mmdebstrap >/dev/null 2>&1; then
    step "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null; }
fi

toolchain="$(rustc --print sysroot)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
mkdir -p "$cargo_home/registry"

work="$(mktemp -d /var/tmp/pnlb-fresh.XXXXXX)"
root="$work/root"
cleanup() {
    # Every mount lives in the private mount namespace of the run below and
    # is gone with it; never delete through a mount that is still there.
    if findmnt -rn -o TARGET | grep -q "^$work"; then
        echo "fresh-machine: $work still has mounts; left in place" >&2
    elif [ "${PNLB_FRESH_KEEP:-0}" = 1 ]; then
        echo "fresh-machine: root kept at $root"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# The same package sources this machine uses (its mirror, its suites).
sources=()
[ -f /etc/apt/sources.list.d/debian.sources ] && sources=(/etc/apt/sources.list.d/debian.sources)

step "building a clean Debian 12 root in $root (minbase + $base_packages)"
mmdebstrap --quiet --variant=minbase --include="$base_packages" bookworm "$root" "${sources[@]}"

step "copying the checkout's tracked files to /src/pnlb"
mkdir -p "$root/src/pnlb"
git -C "$repo" ls-files -z --cached \
    | while IFS= read -r -d '' path; do [ -e "$path" ] && printf '%s\0' "$path"; done \
    | tar --null -T - -cf - | tar -xf - -C "$root/src/pnlb"
git -C "$repo" log -1 --format='fresh-machine: source: %h %s' || true
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    echo "fresh-machine: source includes uncommitted edits to tracked files"
fi

# The registries are reached through a TLS proxy whose CA this bundle holds.
ca_bundle=/etc/ssl/certs/ca-certificates.crt
mkdir -p "$root/opt/rust" "$root/root/.cargo/registry"

# Runs inside the root: first the steps that need the network (packages,
# crates), then the tests in a network namespace of their own, so nothing
# they open is visible outside.
cat > "$root/src/fresh-machine-steps.sh" <<'STEPS'
set -euo pipefail
cd /src/pnlb
started=$SECONDS
step() { echo "fresh-machine: [inside, $((SECONDS - started))s] $*"; }

step "scripts/setup.sh"
scripts/setup.sh

step "cargo build --release"
cargo fetch --locked --quiet
cargo build --release --locked --workspace

step "the Debian package: build, install, verify, purge"
scripts/package.sh
PNLB_THROWAWAY_ROOT=1 scripts/verify-package.sh

step "pnlb check on docs/examples"
for example in docs/examples/*.toml; do
    target/release/pnlb check --config "$example"
done

step "unit, property and BPF fixture tests (in a private network namespace)"
log=$(mktemp)
status=0
unshare --net -- sh -c '
    ip link set lo up
    cargo test --release --offline --locked --workspace --lib --bins &&
    cargo test --release --offline --locked -p pnlb-dataplane --tests
' 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "fresh-machine: tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
STEPS

step "running setup, build, checks and tests inside the root"
unshare --mount --propagation private --fork -- bash -euo pipefail -c '
    root=$1 toolchain=$2 registry=$3 ca_bundle=$4
    mount -t proc proc "$root/proc"
    mount -t sysfs sysfs "$root/sys"
    mount --rbind /dev "$root/dev"
    mount --bind "$toolchain" "$root/opt/rust"
    mount -o remount,bind,ro "$root/opt/rust"
    mount --bind "$registry" "$root/root/.cargo/registry"
    # Its own path: apt regenerates /etc/ssl/certs when it updates
    # ca-certificates, which would drop the proxy CA.
    cp "$ca_bundle" "$root/etc/ssl/proxy-ca-bundle.crt"
    exec chroot "$root" /usr/bin/env -i \
        HOME=/root CARGO_HOME=/root/.cargo CI=true LANG=C.UTF-8 TERM=dumb \
        CARGO_HTTP_CAINFO=/etc/ssl/proxy-ca-bundle.crt SSL_CERT_FILE=/etc/ssl/proxy-ca-bundle.crt \
        PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        bash /src/fresh-machine-steps.sh
' fresh-machine "$root" "$toolchain" "$cargo_home/registry" "$ca_bundle"
step "passed"
