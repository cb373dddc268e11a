#!/usr/bin/env bash
# Installs the package scripts/package.sh built into this machine, checks
# what an operator relies on, then purges it. For throwaway roots only:
# scripts/fresh-machine.sh runs it inside its clean Debian root (it would
# remove a real installation here).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${PNLB_THROWAWAY_ROOT:-}" != 1 ]; then
    echo "verify-package: installs and purges pnlb; runs only in a throwaway root (scripts/fresh-machine.sh)" >&2
    exit 1
fi
deb="$(ls target/debian/pnlb_*.deb)"
check() { echo "verify-package: $*"; }

check "dpkg -i $deb"
dpkg -i "$deb"

check "pnlb --version: $(pnlb --version)"
pnlb check --config /etc/pnlb/pnlb.toml
grep -qx /etc/pnlb/pnlb.toml /var/lib/dpkg/info/pnlb.conffiles
check "/etc/pnlb/pnlb.toml is a conffile and passes pnlb check"

# The unit's binary paths, directives and sandboxing are valid for systemd.
systemd-analyze verify /lib/systemd/system/pnlb.service
check "systemd-analyze verify pnlb.service: clean"

page="$(MANPAGER=cat MANWIDTH=80 man pnlb 2>&1)"
grep -q 'pnlb - Layer-4 load balancer' <<<"$page"
for sub in run check ctl doctor decap; do
    MANPAGER=cat man "pnlb-$sub" >/dev/null
done
check "man pnlb renders ($(wc -l <<<"$page") lines), and one page per subcommand"

bash -c 'source /usr/share/bash-completion/completions/pnlb && complete -p pnlb' >/dev/null
check "bash completion loads"

dpkg --purge pnlb >/dev/null
for path in /usr/sbin/pnlb /etc/pnlb /lib/systemd/system/pnlb.service; do
    if [ -e "$path" ]; then
        echo "verify-package: $path is still there after purge" >&2
        exit 1
    fi
done
check "dpkg --purge removes the binary, the unit and /etc/pnlb"
