#!/usr/bin/env bash
# Builds a PostgreSQL image for testcontainers-go from this machine's server binaries, without a
# registry: it assembles a root filesystem in a temporary directory (the server's bin/, lib/ and
# share/ trees, every shared library they load as listed by ldd, the dynamic loader, bash and a
# few tools for the entrypoint, a postgres user, C.UTF-8 locale and time zone data) and pipes it
# into `docker import`.
#
#   .ci/postgres-image/build.sh [TAG]      TAG defaults to oauthstore/postgres:$PG_MAJOR-local
#
# PG_MAJOR (default 15) selects /usr/lib/postgresql/$PG_MAJOR. The image is labelled with a digest
# of its recipe (this script, entrypoint.sh, the server's version); when an image with the same
# digest exists, nothing is built.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
tag="${1:-oauthstore/postgres:$PG_MAJOR-local}"
pg="/usr/lib/postgresql/$PG_MAJOR"
share="/usr/share/postgresql/$PG_MAJOR"
here="$(cd "$(dirname "$0")" && pwd)"
label=org.oauthstore.recipe
uid=999 # the postgres user's uid and gid in the image, as in the official Debian-based image

say() { printf 'postgres-image: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

[ -x "$pg/bin/postgres" ] && [ -d "$share" ] || die "no PostgreSQL $PG_MAJOR server in $pg and $share"
version="$("$pg/bin/postgres" --version)"
recipe="$({
	cat "$here/build.sh" "$here/entrypoint.sh"
	echo "$version"
	dpkg-query -W "postgresql-$PG_MAJOR" 2>/dev/null || true
} | sha256sum | cut -c1-16)"

old="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
if [ -n "$old" ] && [ "$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$tag" 2>/dev/null)" = "$recipe" ]; then
	say "$tag is up to date (recipe $recipe); not rebuilding"
	exit 0
fi

start=$SECONDS
root="$(mktemp -d /tmp/oauthstore-pgimage.XXXXXX)"
trap 'rm -rf "$root"' EXIT
say "assembling a root filesystem for $version in $root"

# A merged-/usr layout, as on Debian 12: whatever path ldd reports lands in usr/.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{etc,root,tmp,usr/local/bin}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"

# The server's own trees, without the JIT (llvmjit.so would pull in a 110 MB libLLVM; without it
# PostgreSQL runs with jit unavailable) and without man pages.
tar -C / -cf - \
	--exclude="${pg#/}/lib/bitcode" --exclude="${pg#/}/lib/llvmjit*" --exclude="${share#/}/man" \
	"${pg#/}" "${share#/}" usr/share/zoneinfo usr/lib/locale/C.utf8 |
	tar -C "$root" -xf -
sed -ri "s/^#?(listen_addresses)\s*=\s*\S+/\1 = '*'/" "$root$share/postgresql.conf.sample"
grep -q "^listen_addresses = '\*'" "$root$share/postgresql.conf.sample" ||
	die "could not set listen_addresses in postgresql.conf.sample"

# The entrypoint's tools, at /usr/bin whatever their path here (awk is an alternative, for one).
tools=(bash setpriv cat chmod chown grep id ls mkdir rm sleep awk locale)
for t in "${tools[@]}"; do
	p="$(command -v "$t")" || die "$t is not installed"
	cp -L "$p" "$root/usr/bin/$t"
done
ln -s bash "$root/usr/bin/sh"

# Every shared library those binaries and the server's modules load, and the dynamic loader.
mapfile -t elves < <(find "$root$pg/bin" "$root$pg/lib" "$root/usr/bin" -type f \( -perm -u+x -o -name '*.so' \))
libs="$(for f in "${elves[@]}"; do
	out="$(ldd "$f" 2>&1)" || continue # not a dynamic executable (a script, a static binary)
	if grep -q 'not found' <<<"$out"; then
		die "${f#"$root"}: missing libraries: $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
	fi
	awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
done | sort -u)"
for l in $libs; do
	mkdir -p "$root$(dirname "$l")"
	cp -L "$l" "$root$l"
done
say "copied $(wc -w <<<"$libs") shared libraries"

cat >"$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/bin/bash
postgres:x:$uid:$uid:PostgreSQL administrator:/var/lib/postgresql:/bin/bash
EOF
cat >"$root/etc/group" <<EOF
root:x:0:
postgres:x:$uid:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"
ln -s /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"

install -d -o "$uid" -g "$uid" -m 755 "$root/var/lib/postgresql"
install -d -o "$uid" -g "$uid" -m 700 "$root/var/lib/postgresql/data"
install -d -o "$uid" -g "$uid" -m 3777 "$root/var/run/postgresql"
install -d -m 755 "$root/docker-entrypoint-initdb.d"
install -m 755 "$here/entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"

say "importing $tag"
tar -C "$root" --numeric-owner -cf - . | docker import \
	-c 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
	-c 'CMD ["postgres"]' \
	-c "ENV PATH=$pg/bin:/usr/local/bin:/usr/bin:/bin" \
	-c "ENV PG_MAJOR=$PG_MAJOR" \
	-c 'ENV PGDATA=/var/lib/postgresql/data' \
	-c 'ENV LANG=C.UTF-8' \
	-c 'EXPOSE 5432' \
	-c "LABEL $label=$recipe" \
	-m "$version, from the server binaries of $(hostname)" \
	- "$tag" >/dev/null
if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
	docker image rm "$old" >/dev/null 2>&1 || true # the previous build, now untagged
fi

# Fail here, not in the tests, when the loader or a library is missing.
docker run --rm --entrypoint postgres "$tag" --version >/dev/null ||
	die "the image $tag does not run postgres"
size="$(docker image inspect -f '{{.Size}}' "$tag")"
say "built $tag ($((size / 1000000)) MB, recipe $recipe) in $((SECONDS - start)) s"
