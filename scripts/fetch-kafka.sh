#!/usr/bin/env bash
# Fetch the pinned Apache Kafka broker (scripts/kafka/pom.xml) and its dependencies into
# .deps/kafka/ for the test fixtures (tests/kafka_server.py). Idempotent: when the jars for
# the pinned version are already there it does nothing and needs no network.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
pom="$root/scripts/kafka/pom.xml"
dest="$root/.deps/kafka"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
stamp="$dest/.complete-$(sha256sum "$pom" | cut -c1-16)"
if [ -f "$stamp" ] && [ -f "$dest/kafka_2.13-$version.jar" ]; then
  exit 0
fi
command -v mvn >/dev/null || { echo "fetch-kafka: mvn (Maven) is required" >&2; exit 1; }
command -v java >/dev/null || { echo "fetch-kafka: java (17+) is required" >&2; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp" >&2
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$stamp"
