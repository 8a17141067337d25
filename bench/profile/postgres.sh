# Sourced by ingest.sh and replicas.sh: a throw-away PostgreSQL 15 cluster
# in $w/pg (initdb as the postgres user when run as root: it refuses root),
# on 127.0.0.1:17470 with a database `ruse`. Needs w; sets pg (the server's
# pid) and defines pg_cpu. PG_ARGS adds server settings (-c name=value).
P=/usr/lib/postgresql/15/bin
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$w"
    as_pg=(setpriv --reuid postgres --regid postgres --init-groups --)
fi
"${as_pg[@]}" "$P/initdb" -D "$w/pg" -A trust -U ruse --no-sync -E UTF8 --locale=C > "$w/initdb.log"
# shellcheck disable=SC2086
"${as_pg[@]}" "$P/postgres" -D "$w/pg" -p 17470 -k "$w" -c listen_addresses=127.0.0.1 \
    ${PG_ARGS:-} > "$w/pg.log" 2>&1 &
pg=$!
for _ in $(seq 100); do "$P/pg_isready" -q -h 127.0.0.1 -p 17470 && break; sleep 0.1; done
psql -X -q -h 127.0.0.1 -p 17470 -U ruse -d postgres -c "CREATE DATABASE ruse"
# CPU seconds used so far by the database server and its backends.
pg_cpu() {
    local hz total=0 pid
    hz=$(getconf CLK_TCK)
    for pid in "$pg" $(pgrep -P "$pg"); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    awk -v t="$total" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }'
}
