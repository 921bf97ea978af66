#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker's jars from Maven Central into .kafka/kafka-<version>/lib
# (ignored by git; Maven also caches them in ~/.m2). A quick no-op when the stamp matches the POM.
#
#   bash scripts/fetch_kafka.sh          # make kafka
#   FORCE=1 bash scripts/fetch_kafka.sh  # fetch again
# The version is pinned in scripts/kafka/pom.xml (kafka.version); pipeline/kafka_broker.py
# reads the same directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

pom=scripts/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
home=.kafka/kafka-$version
stamp=$home/.stamp
want=$(sha256sum "$pom" | cut -d' ' -f1)

if [[ "${FORCE:-0}" != 1 && -f $stamp && "$(cat "$stamp")" == "$want" ]]; then
    exit 0
fi
for tool in java mvn; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "fetch_kafka: $tool is missing; run scripts/install_system_deps.sh (it installs Java 17 and Maven)" >&2
        exit 1
    }
done

echo "fetch_kafka: fetching Apache Kafka $version jars with Maven into $home/lib" >&2
rm -rf "$home.tmp"
mkdir -p "$home.tmp"
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$PWD/$home.tmp/lib" >&2
ls "$home.tmp"/lib/kafka_2.13-"$version".jar >/dev/null
rm -rf "$home"
mv "$home.tmp" "$home"
echo "$want" > "$stamp"
echo "fetch_kafka: $(ls "$home/lib" | wc -l) jars in $home/lib" >&2
