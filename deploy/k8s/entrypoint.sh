#!/bin/sh
# Starts `dtm serve` for a StatefulSet pod: the node id is the pod's ordinal plus one, the site is
# the zone the pod runs in (given by the downward API as DTM_SITE), pod 0 bootstraps a new cluster
# (ignored once it has state), and every other pod asks pod 0 to add it once it is up.
set -eu
ordinal="${HOSTNAME##*-}"
id=$((ordinal + 1))
set -- serve --node-id "$id" --site "${DTM_SITE:-default}" --data-dir /var/lib/dtm \
    --tls-dir /etc/dtm/tls --master-key-file /etc/dtm/master/master.key \
    --http-addr "0.0.0.0:8443" --grpc-addr "0.0.0.0:8543" \
    --advertise-http "${HOSTNAME}.${DTM_SERVICE}:8443" --advertise-grpc "${HOSTNAME}.${DTM_SERVICE}:8543"
if [ "$ordinal" = "0" ]; then
    exec /usr/local/bin/dtm "$@" --bootstrap
fi
/usr/local/bin/dtm "$@" &
pid=$!
# Join once: `add-node` of a member that already belongs is refused harmlessly.
(
    for _ in $(seq 1 60); do
        if /usr/local/bin/dtm cluster add-node --node "https://${DTM_STATEFULSET}-0.${DTM_SERVICE}:8443" \
            --ca-cert /etc/dtm/tls/ca.pem --token "$(cat /etc/dtm/operator/token)" --id "$id" \
            --http-addr "${HOSTNAME}.${DTM_SERVICE}:8443" --grpc-addr "${HOSTNAME}.${DTM_SERVICE}:8543" \
            --site "${DTM_SITE:-default}" --voter >/dev/null 2>&1; then
            exit 0
        fi
        sleep 5
    done
) &
wait "$pid"
