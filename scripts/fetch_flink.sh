#!/usr/bin/env bash
# Fetch, pinned and cached, what a local Flink cluster for the Beam job needs (make flink):
#   job-server/  Beam's Flink 1.19 job server, shaded by Maven from Maven Central's Beam artifacts
#                (deploy/flink/job-server/pom.xml: Maven Central serves no *-job-server jar here)
#   flink/       a Flink 1.19 distribution: lib/ and the Prometheus reporter plugin of PyPI's
#                apache-flink-libraries sdist (flink-dist is not on Maven Central)
#   bin/boot     Beam's Python SDK harness entrypoint (Go, from the Go module proxy) for
#                --environment_type=PROCESS
# A no-op when the stamp matches the pins. The directory is pipeline.flink_cluster.pieces_dir()
# ($RNNCAST_CACHE/flink-..., default ~/.cache/rnncast/...), shared by every checkout of one user.
#
#   bash scripts/fetch_flink.sh          # fetch what is missing
#   FORCE=1 bash scripts/fetch_flink.sh  # fetch again
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PY:-.venv/bin/python}

# The pins live in pipeline/flink_cluster.py (one definition); this script only reads them.
eval "$("$PY" -m pipeline.flink_cluster pins)"
: "${PIECES:?}" "${BEAM_JOB_SERVER_VERSION:?}" "${FLINK_VERSION:?}" "${FLINK_SDIST_SHA256:?}" "${BEAM_BOOT_VERSION:?}"

want="beam=$BEAM_JOB_SERVER_VERSION flink=$FLINK_VERSION sdist=$FLINK_SDIST_SHA256 boot=$BEAM_BOOT_VERSION pom=$(sha256sum deploy/flink/job-server/pom.xml | cut -d' ' -f1)"
stamp="$PIECES/READY"
if [[ "${FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
rm -f "$stamp"
mkdir -p "$PIECES"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

need() {
    command -v "$1" >/dev/null || { echo "fetch_flink: needs $1 ($2)" >&2; exit 1; }
}
need java "Java 17: apt-get install openjdk-17-jdk-headless"
need mvn "Maven: apt-get install maven"
# The Go toolchain of this machine kind lives outside the default PATH.
[[ -x /usr/local/go/bin/go ]] && PATH=$PATH:/usr/local/go/bin
need go "Go >= 1.22 (golang.org/dl)"

echo "fetch_flink: Beam $BEAM_JOB_SERVER_VERSION Flink job server (Maven Central, shaded here)" >&2
jar="$PIECES/job-server/beam-runners-flink-1.19-job-server-$BEAM_JOB_SERVER_VERSION.jar"
if [[ "${FORCE:-0}" == 1 || ! -f "$jar" ]]; then
    cp deploy/flink/job-server/pom.xml "$work/pom.xml"
    (cd "$work" && mvn -q -B -Dbeam.version="$BEAM_JOB_SERVER_VERSION" package)
    mkdir -p "$PIECES/job-server"
    mv "$work/target/beam-runners-flink-1.19-job-server-$BEAM_JOB_SERVER_VERSION.jar" "$jar"
fi

echo "fetch_flink: Flink $FLINK_VERSION distribution (PyPI apache-flink-libraries sdist)" >&2
if [[ "${FORCE:-0}" == 1 || ! -f "$PIECES/flink/lib/flink-dist-$FLINK_VERSION.jar" ]]; then
    "$PY" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        "apache-flink-libraries==$FLINK_VERSION" -d "$work/sdist"
    sdist="$work/sdist/apache-flink-libraries-$FLINK_VERSION.tar.gz"
    echo "$FLINK_SDIST_SHA256  $sdist" | sha256sum -c --quiet - || { echo "fetch_flink: $sdist: checksum differs from the pin" >&2; exit 1; }
    top="apache-flink-libraries-$FLINK_VERSION/deps"
    tar --no-same-owner -xzf "$sdist" -C "$work" "$top/lib" "$top/plugins/metrics-prometheus"
    rm -rf "$PIECES/flink"
    mkdir -p "$PIECES/flink"
    mv "$work/$top/lib" "$work/$top/plugins" "$PIECES/flink/"
fi

echo "fetch_flink: Beam $BEAM_BOOT_VERSION Python SDK boot (Go module proxy)" >&2
if [[ "${FORCE:-0}" == 1 || ! -x "$PIECES/bin/boot" ]]; then
    mkdir -p "$work/gobin" "$PIECES/bin"
    GOBIN="$work/gobin" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/python/container@v$BEAM_BOOT_VERSION"
    mv "$work/gobin/container" "$PIECES/bin/boot"
fi

echo "$want" > "$stamp"
echo "fetch_flink: ready in $PIECES" >&2
