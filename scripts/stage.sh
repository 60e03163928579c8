#!/usr/bin/env bash
# stage.sh NAME CMD...: run one stage of a make target and print how long it took.
name=$1; shift
start=$(date +%s)
echo "===== [$name] start $(date +%H:%M:%S)"
"$@"; rc=$?
echo "===== [$name] $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
