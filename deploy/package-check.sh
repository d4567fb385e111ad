#!/usr/bin/env bash
# The Debian package, checked as an operator would meet it: `cargo deb` builds it, a fresh Debian 12
# (debootstrap, minbase) installs it with apt, `gtpcharge demo` runs there as an ordinary user on the
# bundled sample, the system user and its directories are checked, and `systemd-analyze verify` reads
# the installed units against the installed binary. Needs root (debootstrap, chroot) and a Debian mirror.
# Usage: bash deploy/package-check.sh [DEB]   (DEB: an already built package; default: build it)
set -euo pipefail
cd "$(dirname "$0")/.."
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

need() { command -v "$1" >/dev/null 2>&1 || { echo "package-check: installing $2" >&2; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need debootstrap debootstrap

deb="${1:-}"
if [ -z "$deb" ]; then
  if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "package-check: installing cargo-deb" >&2
    cargo install cargo-deb --locked --quiet
  fi
  # `cargo deb` builds the release binary and packs it with the assets Cargo.toml names.
  deb=$(cargo deb --locked --quiet 2>/dev/null | tail -n 1)
fi
[ -f "$deb" ] || { echo "package-check: no package at '$deb'" >&2; exit 1; }
echo "package-check: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Depends\):/  \1:/p'

root=$(mktemp -d /tmp/gtpcharge-debian12.XXXXXX)
chmod 0755 "$root"  # the new system's /: mktemp made it 0700
cleanup() {
  for mount in proc dev/pts dev; do umount "$root/$mount" 2>/dev/null || true; done
  rm -rf "$root"
}
trap cleanup EXIT
echo "package-check: debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp "$deb" "$root/tmp/gtpcharge.deb"

echo "package-check: apt-get install ./gtpcharge.deb on the fresh system"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq /tmp/gtpcharge.deb >/dev/null
chroot "$root" dpkg -s gtpcharge | grep -q '^Status: install ok installed'

echo "package-check: the system user and its directories"
chroot "$root" getent passwd gtpcharge >/dev/null
for dir in /var/lib/gtpcharge /var/lib/gtpcharge/spool /var/lib/gtpcharge/ledger; do
  owner=$(chroot "$root" stat -c '%U:%G %a' "$dir")
  [ "$owner" = "gtpcharge:gtpcharge 750" ] || { echo "package-check: $dir is $owner, not gtpcharge:gtpcharge 750" >&2; exit 1; }
done
conf=$(chroot "$root" stat -c '%U:%G %a' /etc/gtpcharge/gtpcharge.toml)
[ "$conf" = "root:gtpcharge 640" ] || { echo "package-check: gtpcharge.toml is $conf" >&2; exit 1; }

echo "package-check: gtpcharge demo as an ordinary user"
chroot "$root" useradd --create-home --user-group spdev
chroot "$root" su spdev -c 'cd ~ && gtpcharge demo' >"$root/tmp/demo.out" 2>&1 || { cat "$root/tmp/demo.out"; exit 1; }
tail -n 3 "$root/tmp/demo.out"

echo "package-check: systemd-analyze verify on the installed units (systemd added, as a standard Debian 12 has it)"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
verify=$(chroot "$root" systemd-analyze verify /lib/systemd/system/gtpcharge-probe.service /lib/systemd/system/gtpcharge-billing.service 2>&1) || { echo "$verify" >&2; exit 1; }
# verify exits 0 on some findings; what it prints about our units is a finding.
if echo "$verify" | grep -q gtpcharge; then echo "$verify" >&2; exit 1; fi

echo "package-check: purge removes the user and the state"
chroot "$root" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq gtpcharge >/dev/null
! chroot "$root" getent passwd gtpcharge >/dev/null
[ ! -e "$root/var/lib/gtpcharge" ]
echo "package-check: OK"
