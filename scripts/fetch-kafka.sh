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
# Java 17 runs the broker, Maven fetches it (Debian packages, installed when missing).
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
if ! mvn -q -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
  -DincludeScope=runtime -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
  cat "$tmp.log" >&2
  echo "fetch-kafka: mvn dependency:copy-dependencies failed" >&2
  exit 1
fi
rm -f "$tmp.log"
rm -rf "$dest"
mv "$tmp" "$dest"
touch "$stamp"
