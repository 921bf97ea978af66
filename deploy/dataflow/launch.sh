#!/usr/bin/env bash
# Launch `rnncast serve` as a streaming job on Google Cloud Dataflow.
#
#   PROJECT=my-project REGION=europe-west1 BUCKET=my-bucket \
#   BOOTSTRAP=broker1:9093,broker2:9093 SDK_IMAGE=europe-docker.pkg.dev/my-project/rnncast/beam-sdk:0.1.0 \
#   RNNCAST_KAFKA_PASSWORD="$(gcloud secrets versions access latest --secret=rnncast-kafka)" \
#   deploy/dataflow/launch.sh [extra Beam options, e.g. --update]
#
# DRY_RUN=1 prints the command instead of running it.
#
# Notes
# - The workers run a custom SDK container (SDK_IMAGE) built FROM apache/beam_python3.11_sdk:2.77.0
#   with rnncast and its pinned requirements installed and the model artifact copied in at
#   ARTIFACT (default /artifacts/current); see deploy/flink/README.md, "SDK container". The launcher
#   (this machine) needs the same Python, Beam version and artifact path.
# - Kafka is read and written by rnncast's own Python DoFns (confluent-kafka), so the workers' VPC
#   (NETWORK/SUBNETWORK) must reach the brokers. Beam's KafkaIO (ReadFromKafka/WriteToKafka, a Java
#   cross-language transform) is an alternative on Dataflow, where the expansion service can be
#   fetched; rnncast does not use it.
# - The password comes from RNNCAST_KAFKA_PASSWORD (or SASL_PASSWORD_FILE). Fetch it from Secret
#   Manager as above rather than writing it into this script or the shell history.
# - Prometheus: each worker process runs the metrics endpoint; Dataflow workers are normally not
#   scraped, so use Dataflow's job metrics / Cloud Monitoring there. The dashboards and alerts in
#   deploy/ assume the Kubernetes deployment (deploy/k8s).
# - Restarting a stateful streaming job without --update starts with empty Beam state: pass
#   --update (same JOB_NAME) to replace a running job and keep its per-stream state.
set -euo pipefail

: "${PROJECT:?set PROJECT (GCP project id)}"
: "${REGION:?set REGION (e.g. europe-west1)}"
: "${BUCKET:?set BUCKET (GCS bucket for temp/staging files, without gs://)}"
: "${BOOTSTRAP:?set BOOTSTRAP (Kafka bootstrap servers host:port,...)}"
: "${SDK_IMAGE:?set SDK_IMAGE (custom Beam Python SDK container with rnncast installed)}"

ARTIFACT=${ARTIFACT:-/artifacts/current}
JOB_NAME=${JOB_NAME:-rnncast}
INPUT_TOPIC=${INPUT_TOPIC:-readings}
OUTPUT_TOPIC=${OUTPUT_TOPIC:-forecasts}
DLQ_TOPIC=${DLQ_TOPIC:-readings-dlq}
GROUP=${GROUP:-rnncast}
STATE_SHARDS=${STATE_SHARDS:-16}  # keys of the stateful step: at least the workers that should share it
MAX_WORKERS=${MAX_WORKERS:-4}
SECURITY_PROTOCOL=${SECURITY_PROTOCOL:-SASL_SSL}
SASL_MECHANISM=${SASL_MECHANISM:-SCRAM-SHA-512}
SASL_USERNAME=${SASL_USERNAME:-rnncast}
SASL_PASSWORD_FILE=${SASL_PASSWORD_FILE:-}

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
  --runner=DataflowRunner
  --project="$PROJECT"
  --region="$REGION"
  --temp_location="gs://$BUCKET/rnncast/tmp"
  --staging_location="gs://$BUCKET/rnncast/staging"
  --job_name="$JOB_NAME"
  --streaming
  --enable_streaming_engine
  --sdk_container_image="$SDK_IMAGE"
  --max_num_workers="$MAX_WORKERS"
)
[[ -n "${NETWORK:-}" ]] && cmd+=(--network="$NETWORK")
[[ -n "${SUBNETWORK:-}" ]] && cmd+=(--subnetwork="$SUBNETWORK")
[[ -n "${SERVICE_ACCOUNT:-}" ]] && cmd+=(--service_account_email="$SERVICE_ACCOUNT")
cmd+=("$@")

if [[ -n "${DRY_RUN:-}" ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
exec "${cmd[@]}"
