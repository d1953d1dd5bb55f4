#!/bin/sh
# PostgreSQL from Debian's package, configured the way the official postgres image reads its environment:
# on the first start, a UTF-8 cluster owned by $POSTGRES_USER with $POSTGRES_PASSWORD, and $POSTGRES_DB.
set -eu
bin=$(ls -d /usr/lib/postgresql/*/bin | tail -n 1)
data=/var/lib/postgresql/data
if [ ! -s "$data/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/password
    "$bin/initdb" -D "$data" -U "$POSTGRES_USER" --pwfile=/tmp/password \
        --encoding=UTF8 --locale=C --auth-local=trust --auth-host=scram-sha-256 > /dev/null
    rm /tmp/password
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$data/pg_hba.conf"
    "$bin/pg_ctl" -D "$data" -w -o "-c listen_addresses=''" start > /dev/null
    "$bin/createdb" -U "$POSTGRES_USER" "$POSTGRES_DB"
    "$bin/pg_ctl" -D "$data" -w stop > /dev/null
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c fsync=off
