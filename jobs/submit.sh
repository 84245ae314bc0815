#!/usr/bin/env bash
# Submit a raylpclip command to a Ray cluster as a job:
#   jobs/submit.sh pretrain jobs/pretrain.yaml data.train=s3://bucket/shards/{00000..01023}.tar
#
# RAY_ADDRESS: the dashboard/job API, reached through a port forward (default http://127.0.0.1:8265;
#   never expose it publicly: the token travels unencrypted).
# The token: RAY_AUTH_TOKEN, or the file RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (see README).
# Extra `ray job submit` flags go in SUBMIT_FLAGS, e.g. SUBMIT_FLAGS="--no-wait --submission-id run-42".
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: jobs/submit.sh COMMAND [CONFIG.yaml] [key=value ...]" >&2
  exit 2
fi
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "jobs/submit.sh: no Ray token: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH, or put it in ~/.ray/auth_token" >&2
  exit 2
fi
# shellcheck disable=SC2086
exec ray job submit --runtime-env cluster/runtime_env.yaml ${SUBMIT_FLAGS:-} -- python -m raylpclip "$@"
