#!/usr/bin/env bash
# Packs this machine's PostgreSQL server (Debian's binaries: postgres, initdb, pg_ctl, the modules
# initdb needs, share/) and the shared libraries they link, except glibc's own, into one tarball,
# so `ferrotune serve` can run its embedded cluster on a machine without PostgreSQL and without a
# network (the GPU machine of bench/gpu/real.py, which installs it at the same paths).
#
#   bash scripts/pack-postgres.sh [OUT.tar.xz]     # default carry/pg.tar.xz
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-carry/pg.tar.xz}"
bin="$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -V | tail -1)")"
[[ -x "$bin/postgres" ]] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
version="$(basename "$(dirname "$bin")")"
[[ "$version" == 15 ]] || { echo "bench/gpu/real.py installs PostgreSQL 15; found $version" >&2; exit 1; }
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/pgmin/pg15/bin" "$stage/pgmin/pg15/lib" "$stage/pgmin/libs"
cp "$bin"/{postgres,initdb,pg_ctl} "$stage/pgmin/pg15/bin/"
cp "$bin"/../lib/{plpgsql.so,dict_snowball.so,libpqwalreceiver.so} "$stage/pgmin/pg15/lib/"
cp -r "/usr/share/postgresql/$version" "$stage/pgmin/share15"
ldd "$bin"/{postgres,initdb,pg_ctl} | awk '/=> \//{print $3}' | sort -u |
  grep -vE '/(libc|libm|libresolv|libpthread|libdl|librt)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/pgmin/libs/"; done
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cf - pgmin | xz -T0 -9 > "$out"
echo "packed PostgreSQL $version into $out ($(du -h "$out" | cut -f1))"
