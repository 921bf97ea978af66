#!/usr/bin/env bash
# Launch `rnncast serve` on a distributed Beam runner: Apache Flink (Beam's portable Flink runner) or
# Google Cloud Dataflow. One script, so both get the same serve options from the same variables.
#
#   deploy/launch.sh flink [extra Beam options]
#     FLINK_MASTER=flink-jobmanager:8081 BOOTSTRAP=kafka:9093 \
#     ENVIRONMENT_TYPE=EXTERNAL ENVIRONMENT_CONFIG=localhost:50000 RNNCAST_KAFKA_PASSWORD=...
#     See deploy/flink/README.md for the SDK container, environment types and checkpointing. What ran here
#     (README "Run here"): `rnncast flink-cluster` prints the options of its cluster; with
#     JOB_ENDPOINT=127.0.0.1:<job port> ENVIRONMENT_TYPE=PROCESS
#     ENVIRONMENT_CONFIG='{"command":"<make flink's boot>"}' CHECKPOINTING_INTERVAL=5000
#     this script builds the same command.
#
#   deploy/launch.sh dataflow [extra Beam options, e.g. --update]
#     PROJECT=my-project REGION=europe-west1 BUCKET=my-bucket BOOTSTRAP=broker1:9093,broker2:9093 \
#     SDK_IMAGE=europe-docker.pkg.dev/my-project/rnncast/beam-sdk:0.1.0 \
#     RNNCAST_KAFKA_PASSWORD="$(gcloud secrets versions access latest --secret=rnncast-kafka)"
#     See deploy/dataflow/README.md.
#
# Every serve option left unset here keeps `rnncast serve`'s own default (`rnncast serve --help`);
# STATE_SHARDS, for example, defaults to the one for distributed runners there.
# DRY_RUN=1 prints the command instead of running it.
set -euo pipefail

usage="usage: deploy/launch.sh flink|dataflow [extra Beam options]"
target=${1:-}
case "$target" in
  flink|dataflow) shift ;;
  *) echo "error: first argument must be flink or dataflow, got '${target}'" >&2; echo "$usage" >&2; exit 2 ;;
esac

: "${BOOTSTRAP:?set BOOTSTRAP (Kafka bootstrap servers host:port,...)}"
if [[ "$target" == flink ]]; then
  : "${FLINK_MASTER:?set FLINK_MASTER (Flink JobManager REST address host:port)}"
  default_protocol=PLAINTEXT
else
  : "${PROJECT:?set PROJECT (GCP project id)}"
  : "${REGION:?set REGION (e.g. europe-west1)}"
  : "${BUCKET:?set BUCKET (GCS bucket for temp/staging files, without gs://)}"
  : "${SDK_IMAGE:?set SDK_IMAGE (custom Beam Python SDK container with rnncast installed)}"
  default_protocol=SASL_SSL
fi

ARTIFACT=${ARTIFACT:-/artifacts/current}
SECURITY_PROTOCOL=${SECURITY_PROTOCOL:-$default_protocol}
SASL_MECHANISM=${SASL_MECHANISM:-SCRAM-SHA-512}
SASL_USERNAME=${SASL_USERNAME:-rnncast}
SASL_PASSWORD_FILE=${SASL_PASSWORD_FILE:-}

cmd=(rnncast serve --artifact "$ARTIFACT" --bootstrap "$BOOTSTRAP" --security-protocol "$SECURITY_PROTOCOL")
# Optional serve options: passed only when set, so rnncast's defaults stay the only defaults.
for pair in INPUT_TOPIC:--input-topic OUTPUT_TOPIC:--output-topic DLQ_TOPIC:--dlq-topic GROUP:--group \
            STATE_SHARDS:--state-shards GUARANTEE:--guarantee STATE_TTL:--state-ttl; do
  var=${pair%%:*}
  if [[ -n "${!var:-}" ]]; then cmd+=("${pair#*:}" "${!var}"); fi
done
if [[ "$SECURITY_PROTOCOL" == SASL_* ]]; then
  cmd+=(--sasl-mechanism "$SASL_MECHANISM" --sasl-username "$SASL_USERNAME")
  if [[ -n "$SASL_PASSWORD_FILE" ]]; then
    cmd+=(--sasl-password-file "$SASL_PASSWORD_FILE")
  elif [[ -z "${RNNCAST_KAFKA_PASSWORD:-}" && -z "${DRY_RUN:-}" ]]; then
    echo "error: $SECURITY_PROTOCOL needs RNNCAST_KAFKA_PASSWORD or SASL_PASSWORD_FILE" >&2
    exit 2
  fi
fi

if [[ "$target" == flink ]]; then
  FLINK_VERSION=${FLINK_VERSION:-1.19} # must match the cluster and the job server (make flink builds Beam 2.62.0's, for 1.19)
  JOB_ENDPOINT=${JOB_ENDPOINT:-}  # a running Beam job server (host:port); empty: Beam starts one from FLINK_JOB_SERVER_JAR
  CHECKPOINTING_INTERVAL=${CHECKPOINTING_INTERVAL:-}  # ms; options of the job server, not of the Python SDK
  cmd+=(
    --runner=FlinkRunner
    --flink_master="$FLINK_MASTER"
    --flink_version="$FLINK_VERSION"
    --environment_type="${ENVIRONMENT_TYPE:-EXTERNAL}"  # EXTERNAL | DOCKER | PROCESS | LOOPBACK
    --environment_config="${ENVIRONMENT_CONFIG:-localhost:50000}"
    --parallelism="${PARALLELISM:-2}"
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
else
  cmd+=(
    --runner=DataflowRunner
    --project="$PROJECT"
    --region="$REGION"
    --temp_location="gs://$BUCKET/rnncast/tmp"
    --staging_location="gs://$BUCKET/rnncast/staging"
    --job_name="${JOB_NAME:-rnncast}"
    --streaming
    --enable_streaming_engine
    --sdk_container_image="$SDK_IMAGE"
    --max_num_workers="${MAX_WORKERS:-4}"
  )
  [[ -n "${NETWORK:-}" ]] && cmd+=(--network="$NETWORK")
  [[ -n "${SUBNETWORK:-}" ]] && cmd+=(--subnetwork="$SUBNETWORK")
  [[ -n "${SERVICE_ACCOUNT:-}" ]] && cmd+=(--service_account_email="$SERVICE_ACCOUNT")
fi
cmd+=("$@")

if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
