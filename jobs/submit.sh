#!/usr/bin/env bash
# Submit a raylpclip command to a Ray cluster as a Ray job, uploading the checkout this script lives in:
#   jobs/submit.sh pretrain jobs/pretrain.yaml 'data.train=s3://my-bucket/laion/{00000..01023}.tar'
#   SUBMIT_FLAGS="--no-wait --submission-id psd-run-1" jobs/submit.sh pretrain jobs/pretrain.yaml
# which runs, from the repository root:
#   ray job submit --address $RAY_ADDRESS --runtime-env cluster/runtime_env.yaml --working-dir . \
#       [SUBMIT_FLAGS] -- python -m raylpclip COMMAND [ARGS...]
# `python -m raylpclip` runs the uploaded code (the job's working directory comes first on sys.path), so a
# job never runs an older raylpclip installed in the node image. Paths in ARGS are relative to the repository
# root: it is the job's working directory on the cluster.
#
# Environment:
#   RAY_ADDRESS          the job API; default http://127.0.0.1:8265, the local end of a port forward
#                        (`ray dashboard cluster/launcher.yaml`, or `kubectl port-forward svc/raylpclip-head-svc
#                        8265:8265`). The token travels unencrypted: never point this at a public address.
#   RAY_AUTH_TOKEN       the cluster's token; else the file RAY_AUTH_TOKEN_PATH; else ~/.ray/auth_token
#   SUBMIT_FLAGS         extra `ray job submit` flags (--no-wait, --submission-id ID, --entrypoint-num-cpus N)
#   PYTHON               the interpreter on the cluster (default: python)
#   RAY                  the ray CLI here (default: ray on PATH, else .venv/bin/ray)
# Afterwards, with the same RAY_ADDRESS and token: ray job list | ray job logs -f ID | ray job status ID |
# ray job stop ID.
set -euo pipefail
cd "$(dirname "$0")/.."
me="jobs/submit.sh"

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}
if [ $# -lt 1 ]; then
  usage >&2
  exit 2
fi
case "$1" in -h|--help) usage; exit 0 ;; esac

# The token: Ray's own order (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), checked here so a missing
# token is one clear line instead of an HTTP 401 after the working directory was zipped and uploaded.
if [ -n "${RAY_AUTH_TOKEN:-}" ]; then
  :
elif [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then
  if [ ! -s "$RAY_AUTH_TOKEN_PATH" ]; then
    echo "$me: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is missing or empty; it must hold the cluster's Ray token" >&2
    exit 2
  fi
elif [ ! -s "$HOME/.ray/auth_token" ]; then
  echo "$me: no Ray auth token: set RAY_AUTH_TOKEN, or RAY_AUTH_TOKEN_PATH=<file>, or put the cluster's token" \
       "in $HOME/.ray/auth_token (launcher: the file you ran \`ray up\` with; KubeRay: kubectl get secret" \
       "raylpclip-ray-token -o jsonpath='{.data.auth_token}' | base64 -d)" >&2
  exit 2
fi
export RAY_AUTH_MODE=token   # the Ray CLI sends the token only in token mode

export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
hostport="${RAY_ADDRESS#*://}"
host="${hostport%%/*}"
host="${host%:*}"
case "$RAY_ADDRESS" in
  https://*) ;;
  *) case "$host" in
       127.0.0.1|localhost|"[::1]") ;;
       *) echo "$me: warning: sending the Ray token unencrypted to $host; reach the job API through a port" \
               "forward to 127.0.0.1 unless $host is on the cluster's private network" >&2 ;;
     esac ;;
esac

# Config files named in the arguments must exist here: they travel in the uploaded working directory.
for arg in "${@:2}"; do
  case "$arg" in
    *=*) ;;
    *.yaml|*.yml)
      if [ ! -f "$arg" ]; then
        echo "$me: config not found: $arg (paths are relative to the repository root, the job's working directory)" >&2
        exit 2
      fi ;;
  esac
done

ray_cli="${RAY:-}"
if [ -z "$ray_cli" ]; then
  if command -v ray >/dev/null 2>&1; then ray_cli=ray
  elif [ -x .venv/bin/ray ]; then ray_cli=.venv/bin/ray
  else
    echo "$me: the ray CLI was not found: install raylpclip here (pip install -c constraints.txt -e .) or set RAY" >&2
    exit 2
  fi
fi

read -r -a extra <<< "${SUBMIT_FLAGS:-}"
exec "$ray_cli" job submit --address "$RAY_ADDRESS" --runtime-env cluster/runtime_env.yaml --working-dir . \
  ${extra[@]+"${extra[@]}"} -- "${PYTHON:-python}" -m raylpclip "$@"
