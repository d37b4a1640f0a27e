#!/bin/bash
# Entrypoint of the local PostgreSQL image that .ci/postgres-image/build.sh assembles from this
# machine's server binaries. It does what testcontainers-go's postgres module relies on in the
# official image's docker-entrypoint.sh:
#
#   - CMD is `postgres [-c name=value ...]` (an argument list starting with a flag gets `postgres`
#     prepended); any other command is run as is.
#   - Started as root, it prepares $PGDATA and re-executes itself as the postgres user.
#   - On an empty $PGDATA: initdb with superuser $POSTGRES_USER (default postgres) and password
#     $POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust), extra initdb arguments
#     from $POSTGRES_INITDB_ARGS; `host all all all <POSTGRES_HOST_AUTH_METHOD, default
#     scram-sha-256>` in pg_hba.conf; then a temporary server listening only on the Unix socket
#     creates $POSTGRES_DB (default: the user name) and runs /docker-entrypoint-initdb.d/*.sh and
#     *.sql, and stops.
#   - Then the real server starts, listening on all addresses, with the CMD's options.
#
# Like the official image it therefore logs "database system is ready to accept connections"
# twice on a first start (temporary server, then real server), which is what the module's
# BasicWaitStrategies waits for.
set -Eeuo pipefail

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
	exec "$@"
fi
shift # what remains are the server's options

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

if [ "$EUID" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 3777 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --clear-groups -- "$0" postgres "$@"
fi

log() { printf '%s\n' "$*" >&2; }

initialize() {
	local user="${POSTGRES_USER:-postgres}"
	local db="${POSTGRES_DB:-$user}"
	local auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
		log "Error: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)."
		exit 1
	fi

	# POSTGRES_INITDB_ARGS is word-split on purpose, as in the official image.
	# shellcheck disable=SC2086
	initdb --username="$user" --pwfile=<(printf '%s\n' "${POSTGRES_PASSWORD:-}") \
		--encoding=UTF8 --locale=C.UTF-8 ${POSTGRES_INITDB_ARGS:-}
	printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

	# Temporary server: Unix socket only, so nothing outside sees it before it is ready.
	pg_ctl -D "$PGDATA" -w start -o "$(printf '%q ' "$@" -c listen_addresses= -p "${PGPORT:-5432}")"

	local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$user")
	if [ "$db" != postgres ]; then
		"${psql[@]}" --dbname postgres --set db="$db" <<<'CREATE DATABASE :"db";'
	fi
	local f
	shopt -s nullglob
	for f in /docker-entrypoint-initdb.d/*; do
		case "$f" in
		*.sh)
			log "$0: running $f"
			if [ -x "$f" ]; then "$f"; else . "$f"; fi
			;;
		*.sql)
			log "$0: running $f"
			"${psql[@]}" --dbname "$db" -f "$f"
			;;
		*) log "$0: ignoring $f" ;;
		esac
	done
	shopt -u nullglob

	pg_ctl -D "$PGDATA" -m fast -w stop
	log ""
	log "PostgreSQL init process complete; ready for start up."
	log ""
}

if [ -s "$PGDATA/PG_VERSION" ]; then
	log "PostgreSQL Database directory appears to contain a database; Skipping initialization"
else
	initialize "$@"
fi
exec postgres "$@"
