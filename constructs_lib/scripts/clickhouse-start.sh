# Starts ClickHouse through the official image's own entrypoint, after adding one server configuration file: the
# system log tables bounded, as Langfuse's scaling guide recommends (they have no TTL by default, the query profiler
# writes trace_log all the time, and Langfuse reads none of them). The container's command runs it (no custom image).
#
# - Removed: trace_log, text_log, opentelemetry_span_log, asynchronous_metric_log, metric_log, latency_log.
# - Kept for debugging, each row kept 30 days: query_log and part_log (a `ttl` merged into the image's settings;
#   ClickHouse recreates a system table whose definition changed and keeps the old one as <name>_<n>).
# ClickHouse merges every file of config.d into config.xml at start; `remove` drops the image's element.
set -eu
config_d=${CLICKHOUSE_CONFIG_D:-/etc/clickhouse-server/config.d}
mkdir -p "$config_d"
cat > "$config_d/platform-system-logs.xml" <<'XML'
<clickhouse>
    <trace_log remove="1"/>
    <text_log remove="1"/>
    <opentelemetry_span_log remove="1"/>
    <asynchronous_metric_log remove="1"/>
    <metric_log remove="1"/>
    <latency_log remove="1"/>
    <query_log>
        <ttl>event_date + INTERVAL 30 DAY DELETE</ttl>
    </query_log>
    <part_log>
        <ttl>event_date + INTERVAL 30 DAY DELETE</ttl>
    </part_log>
</clickhouse>
XML
exec "${CLICKHOUSE_ENTRYPOINT:-/entrypoint.sh}" "$@"
