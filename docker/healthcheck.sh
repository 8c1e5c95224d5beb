#!/bin/bash
# Container healthcheck for the services: `lmt-healthcheck ADDR_VARIABLE [PATH]`.
#
# Asks the service for PATH (default /readyz) on the port of its own listen address, read
# from the variable the service reads (ORDER_ADDR, PAY_ADDR or GATEWAY_ADDR), so that the port
# is written in one place only. Healthy means HTTP 200. Plain bash (/dev/tcp): the runtime
# image needs no curl.
set -uo pipefail

var="${1:?usage: lmt-healthcheck ADDR_VARIABLE [PATH]}"
path="${2:-/readyz}"
addr="${!var:-}"
if [[ -z "$addr" ]]; then
    echo "unhealthy: $var is not set" >&2
    exit 1
fi
port="${addr##*:}"
host="${addr%:*}"
case "$host" in
"" | 0.0.0.0 | "[::]" | "::") host=127.0.0.1 ;;
\[*\]) host="${host#[}" host="${host%]}" ;;
esac
if ! exec 3<>"/dev/tcp/$host/$port"; then
    echo "unhealthy: nothing listens on $host:$port" >&2
    exit 1
fi
printf 'GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' "$path" >&3
status=""
IFS= read -r -t 5 status <&3 || true
status="${status%$'\r'}"
exec 3<&-
if [[ "$status" =~ ^HTTP/[0-9.]+\ 200 ]]; then
    exit 0
fi
echo "unhealthy: GET $path answered '${status:-nothing}'" >&2
exit 1
