#!/bin/sh
# ENTRYPOINT of the project image. SageMaker starts training containers as `IMAGE train` and
# serving containers as `IMAGE serve`; processing jobs (and SageMaker local mode) set their own
# entry point, which replaces this one. Any other command runs unchanged:
#   docker run IMAGE python3 -c 'import xgboost'
set -e
case "${1:-}" in
    train|serve) cmd="$1"; shift; exec "/usr/local/bin/$cmd" "$@" ;;
    "") exec /bin/bash ;;
    *) exec "$@" ;;
esac
