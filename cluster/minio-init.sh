#!/bin/sh
# Create the buckets wcrnn needs on a MinIO (or any S3-compatible) server, idempotently.
#
#   mlflow  MLflow's artifact store (the tracking server proxies it: --artifacts-destination s3://mlflow)
#   wcrnn   Ray's trial state (WCRNN_STORAGE=s3://wcrnn/runs): checkpoints any node can restore
#
# docker-compose.yml runs it once in the `minio-init` service (minio/mc image). By hand:
#   MINIO_ENDPOINT=http://HOST:9000 MINIO_ROOT_USER=... MINIO_ROOT_PASSWORD=... sh cluster/minio-init.sh
# Settings (environment): MINIO_ENDPOINT (default http://minio:9000), MINIO_ROOT_USER,
# MINIO_ROOT_PASSWORD, WCRNN_BUCKETS (default "mlflow wcrnn").
set -eu

endpoint="${MINIO_ENDPOINT:-http://minio:9000}"
buckets="${WCRNN_BUCKETS:-mlflow wcrnn}"
: "${MINIO_ROOT_USER:?set MINIO_ROOT_USER}"
: "${MINIO_ROOT_PASSWORD:?set MINIO_ROOT_PASSWORD}"

# The server may still be starting when this runs outside compose: retry for about a minute.
tries=0
until mc alias set wcrnn "$endpoint" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" > /dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 30 ]; then
        echo "minio-init: cannot reach MinIO at $endpoint with the given credentials" >&2
        exit 1
    fi
    sleep 2
done

for bucket in $buckets; do
    mc mb --ignore-existing "wcrnn/$bucket"
done
mc ls wcrnn
echo "minio-init: buckets ready at $endpoint: $buckets"
