#!/usr/bin/env bash
# Installs what pnlb needs to build, test and run its lab on Debian (root).
# Idempotent: installs only what is missing.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: run as root (apt-get, network namespaces and XDP need it)" >&2
    exit 1
fi

missing=()
need_command() { command -v "$1" >/dev/null 2>&1 || missing+=("$2"); }
need_package() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" || missing+=("$1"); }

need_command clang-19 clang-19          # compiles the XDP programs in bpf/
need_package libelf-dev                 # vendored libbpf (libbpf-sys) builds against it
need_package zlib1g-dev
need_package libssl-dev                 # https health checks (openssl crate)
need_command openssl openssl            # lab: self-signed certificate for nginx's https
need_package linux-libc-dev             # linux/bpf.h and friends
need_command pkg-config pkg-config
need_command make make
need_command ip iproute2                # lab namespaces, `pnlb doctor`
need_command sysctl procps              # lab and fixtures: forwarding on in their namespaces
need_command ethtool ethtool            # lab: checksum offload off on veths
need_command curl curl                  # lab: real HTTP client
need_command nginx nginx-light          # lab: real HTTP servers
need_command wrk wrk                    # benchmarks
need_command iperf3 iperf3              # benchmarks
need_command nft nftables               # benchmarks: the kernel baseline
need_command bird bird2                 # [bgp]: announces VIPs (and the lab's ECMP router)
need_command haproxy haproxy            # benchmarks: the proxy baseline
need_command chromium chromium          # tests: the web dashboard in headless Chromium
need_command dpkg-shlibdeps dpkg-dev    # scripts/package.sh: the package's library dependencies
need_command strip binutils             # scripts/package.sh
need_command man man-db                 # tests: the packaged man pages render
need_command systemd-analyze systemd    # tests: the packaged unit verifies

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Services from these packages (nginx) must not start in the root
    # namespace: the lab starts its own inside namespaces.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bird2's own service would run BIRD in this host's namespace with the
# package's config: pnlb runs BIRD where it is configured to (the lab in
# its namespaces), never the packaged service.
if [ -e /lib/systemd/system/bird.service ] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-enabled --quiet bird.service 2>/dev/null; then
    systemctl disable --now bird.service >/dev/null 2>&1 || true
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo is missing; install a Rust toolchain >= 1.85 (rustup) and re-run" >&2
    exit 1
fi
