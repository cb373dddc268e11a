#!/usr/bin/env bash
# Builds the Debian package target/debian/pnlb_VERSION_ARCH.deb: the release
# binary, the systemd unit, /etc/pnlb/pnlb.toml (a conffile), man pages and
# shell completions generated from the CLI definition, and the docs.
#
# Plain dpkg-deb rather than cargo-deb: nothing to compile or install beyond
# dpkg-dev, and every file of the package is named here. The dependencies on
# shared libraries come from dpkg-shlibdeps, as in any Debian build.
set -euo pipefail
cd "$(dirname "$0")/.."

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
arch="$(dpkg --print-architecture)"
for tool in dpkg-deb dpkg-shlibdeps gzip strip; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "package: $tool is missing; run scripts/setup.sh" >&2
        exit 1
    }
done

cargo build --release --locked --quiet --bin pnlb
binary=target/release/pnlb

out=target/debian
stage="$out/pnlb_${version}_${arch}"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"

install -D -m 0755 --strip "$binary" "$stage/usr/sbin/pnlb"
install -D -m 0644 packaging/pnlb.service "$stage/lib/systemd/system/pnlb.service"
install -D -m 0644 packaging/pnlb.toml "$stage/etc/pnlb/pnlb.toml"

man="$stage/usr/share/man/man8"
"$binary" manpages "$man"
gzip -9n "$man"/*.8

"$binary" completions bash | install -D -m 0644 /dev/stdin "$stage/usr/share/bash-completion/completions/pnlb"
"$binary" completions zsh | install -D -m 0644 /dev/stdin "$stage/usr/share/zsh/vendor-completions/_pnlb"
"$binary" completions fish | install -D -m 0644 /dev/stdin "$stage/usr/share/fish/vendor_completions.d/pnlb.fish"

doc="$stage/usr/share/doc/pnlb"
install -D -m 0644 README.md "$doc/README.md"
install -m 0644 docs/*.md "$doc/"
install -D -m 0644 -t "$doc/examples" docs/examples/*.toml
install -m 0644 packaging/debian/copyright "$doc/copyright"
printf 'pnlb (%s) unstable; urgency=medium\n\n  * Built from %s.\n\n -- pnlb developers <pnlb@localhost>  %s\n' \
    "$version" "$(git log -1 --format=%h 2>/dev/null || echo 'a source tree')" "$(date -R)" \
    | gzip -9n > "$doc/changelog.Debian.gz"

install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
echo /etc/pnlb/pnlb.toml > "$stage/DEBIAN/conffiles"

# dpkg-shlibdeps wants to run from a source tree with debian/control.
shlibs_dir="$(mktemp -d)"
trap 'rm -rf "$shlibs_dir"' EXIT
mkdir -p "$shlibs_dir/debian"
touch "$shlibs_dir/debian/control"
shlibs="$(cd "$shlibs_dir" && dpkg-shlibdeps -O "$OLDPWD/$stage/usr/sbin/pnlb" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"

# iproute2: `pnlb doctor` reads the links with `ip -j -d addr` (the daemon
# itself asks the kernel over rtnetlink).
cat > "$stage/DEBIAN/control" <<EOF
Package: pnlb
Version: $version
Architecture: $arch
Maintainer: pnlb developers <pnlb@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: ${shlibs:+$shlibs, }iproute2
Section: net
Priority: optional
Description: Layer-4 load balancer with an XDP data plane
 pnlb balances TCP and UDP virtual IPs over pools of real servers by NAT,
 SNAT, Direct Routing or tunneling, with IPVS's schedulers, Maglev and
 consistent hashing with bounded loads, health checks, a REST API and
 Prometheus metrics, and active-passive failover with connection sync.
 Packets are forwarded by an XDP program and never leave the kernel's fast
 path.
EOF

deb="$out/pnlb_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "package: $deb ($(du -h "$deb" | cut -f1); depends: ${shlibs:+$shlibs, }iproute2)"
