#!/bin/bash
# The guide's backend/start_workers.sh, for atomq. Every setting can come from the environment
# (or the systemd EnvironmentFile); REDIS_URL, or REDIS_HOST/REDIS_PORT/REDIS_DB/REDIS_PASSWORD.
set -euo pipefail

QUEUES="${QUEUES:-social_media workflows default}"
WORKER_NAME="${WORKER_NAME:-atom-worker}"
WORKER_COUNT="${WORKER_COUNT:-1}"
TIMEOUT="${TIMEOUT:-300}"  # 5 minutes
LOG_FILE="${LOG_FILE:-logs/rq-worker.log}"
LOG_LEVEL="${LOG_LEVEL:-INFO}"
ATOMQ="${ATOMQ:-atomq}"

mkdir -p "$(dirname "$LOG_FILE")"

# exec: systemd's SIGTERM reaches the supervisor, which lets running jobs finish.
# --log-file reopens the file when logrotate moves it; anything printed outside the logger
# (a crash before logging starts) still goes to stdout/stderr, which systemd captures.
# shellcheck disable=SC2086  # QUEUES is a space-separated list on purpose
exec "$ATOMQ" worker $QUEUES \
  --name "$WORKER_NAME" \
  --count "$WORKER_COUNT" \
  ${REDIS_URL:+--url "$REDIS_URL"} \
  --timeout "$TIMEOUT" \
  --log-level "$LOG_LEVEL" \
  --log-file "$LOG_FILE"
