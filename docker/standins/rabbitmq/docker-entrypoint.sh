#!/bin/bash
# Entrypoint of the RabbitMQ stand-in image (see the Dockerfile beside it).
set -Eeuo pipefail

if [[ "${1:-}" != rabbitmq-server ]]; then
    exec "$@"
fi

if [[ "$(id -u)" == 0 ]]; then
    user="${RABBITMQ_DEFAULT_USER:-guest}"
    pass="${RABBITMQ_DEFAULT_PASS:-guest}"
    # default_user/default_pass apply when the node starts with an empty database, as in the
    # official image.
    cat >/etc/rabbitmq/rabbitmq.conf <<CONF
loopback_users.guest = false
listeners.tcp.default = 5672
management.tcp.port = 15672
log.console = true
log.console.level = info
log.file = false
default_user = $user
default_pass = $pass
CONF
    chown rabbitmq:rabbitmq /etc/rabbitmq/rabbitmq.conf
    chmod 600 /etc/rabbitmq/rabbitmq.conf
    mkdir -p /var/lib/rabbitmq /var/log/rabbitmq
    chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /var/log/rabbitmq
    cd /var/lib/rabbitmq
    exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        /usr/lib/rabbitmq/bin/rabbitmq-server
fi
cd /var/lib/rabbitmq
exec /usr/lib/rabbitmq/bin/rabbitmq-server
