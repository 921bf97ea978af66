#!/usr/bin/env bash
# Launch `rnncast serve` on an Apache Flink cluster through Beam's portable Flink runner.
# See deploy/flink/README.md for the SDK container, environment types and checkpointing.
#
#   FLINK_MASTER=flink-jobmanager:8081 BOOTSTRAP=kafka:9093 \
#   ENVIRONMENT_TYPE=EXTERNAL ENVIRONMENT_CONFIG=localhost:50000 \
#   RNNCAST_KAFKA_PASSWORD=... deploy/flink/launch.sh [extra Beam options]
#
# What ran here (README "Run here"): `rnncast flink-cluster` prints the options of its cluster; with
#   JOB_ENDPOINT=127.0.0.1:<job port> ENVIRONMENT_TYPE=PROCESS \
#   ENVIRONMENT_CONFIG='{"command":"<make flink's boot>"}' CHECKPOINTING_INTERVAL=5000
# this script builds the same command.
#
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

: "${FLINK_MASTER:?set FLINK_MASTER (Flink JobManager REST address host:port)}"
: "${BOOTSTRAP:?set BOOTSTRAP (Kafka bootstrap servers host:port,...)}"

ARTIFACT=${ARTIFACT:-/artifacts/current}
FLINK_VERSION=${FLINK_VERSION:-1.19} # must match the cluster and the job server (make flink builds Beam 2.62.0's, for 1.19)
ENVIRONMENT_TYPE=${ENVIRONMENT_TYPE:-EXTERNAL}  # EXTERNAL | DOCKER | PROCESS | LOOPBACK
ENVIRONMENT_CONFIG=${ENVIRONMENT_CONFIG:-localhost:50000}
PARALLELISM=${PARALLELISM:-2}
INPUT_TOPIC=${INPUT_TOPIC:-readings}
OUTPUT_TOPIC=${OUTPUT_TOPIC:-forecasts}
DLQ_TOPIC=${DLQ_TOPIC:-readings-dlq}
GROUP=${GROUP:-rnncast}
STATE_SHARDS=${STATE_SHARDS:-16}  # keys of the stateful step: at least the workers that should share it
SECURITY_PROTOCOL=${SECURITY_PROTOCOL:-PLAINTEXT}
SASL_MECHANISM=${SASL_MECHANISM:-SCRAM-SHA-512}
SASL_USERNAME=${SASL_USERNAME:-rnncast}
SASL_PASSWORD_FILE=${SASL_PASSWORD_FILE:-}
JOB_ENDPOINT=${JOB_ENDPOINT:-}  # a running Beam job server (host:port); empty: Beam starts one from FLINK_JOB_SERVER_JAR
CHECKPOINTING_INTERVAL=${CHECKPOINTING_INTERVAL:-}  # ms; options of the job server, not of the Python SDK

cmd=(
  rnncast serve
  --artifact "$ARTIFACT"
  --bootstrap "$BOOTSTRAP"
  --input-topic "$INPUT_TOPIC"
  --output-topic "$OUTPUT_TOPIC"
  --dlq-topic "$DLQ_TOPIC"
  --group "$GROUP"
  --state-shards "$STATE_SHARDS"
  --security-protocol "$SECURITY_PROTOCOL"
)
if [[ "$SECURITY_PROTOCOL" == SASL_* ]]; then
  cmd+=(--sasl-mechanism "$SASL_MECHANISM" --sasl-username "$SASL_USERNAME")
  if [[ -n "$SASL_PASSWORD_FILE" ]]; then
    cmd+=(--sasl-password-file "$SASL_PASSWORD_FILE")
  elif [[ -z "${RNNCAST_KAFKA_PASSWORD:-}" && -z "${DRY_RUN:-}" ]]; then
    echo "error: $SECURITY_PROTOCOL needs RNNCAST_KAFKA_PASSWORD or SASL_PASSWORD_FILE" >&2
    exit 2
  fi
fi
cmd+=(
  --runner=FlinkRunner
  --flink_master="$FLINK_MASTER"
  --flink_version="$FLINK_VERSION"
  --environment_type="$ENVIRONMENT_TYPE"
  --environment_config="$ENVIRONMENT_CONFIG"
  --parallelism="$PARALLELISM"
  --streaming
)
# The Flink job server jar is downloaded from Maven Central unless given (offline clusters).
[[ -n "${FLINK_JOB_SERVER_JAR:-}" ]] && cmd+=(--flink_job_server_jar="$FLINK_JOB_SERVER_JAR")
[[ -n "$JOB_ENDPOINT" ]] && cmd+=(--job_endpoint="$JOB_ENDPOINT")
if [[ -n "$CHECKPOINTING_INTERVAL" ]]; then
  # Beam 2.62's Flink operators must finish the open SDK bundle at each checkpoint, or streaming
  # pipelines stall after their first element (deploy/flink/README.md).
  cmd+=(--checkpointing_interval="$CHECKPOINTING_INTERVAL" --finish_bundle_before_checkpointing)
fi
cmd+=("$@")

if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
