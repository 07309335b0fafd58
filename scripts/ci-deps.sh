#!/usr/bin/env bash
# System packages the test suite needs (real servers the fixtures start on free ports).
# Idempotent; safe to run on a machine that already has them.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v clickhouse-server >/dev/null || need+=(clickhouse-server)
command -v clickhouse-client >/dev/null || need+=(clickhouse-client)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The dashboard test drives Debian's Chromium through its matching chromedriver.
browser=()
command -v chromium >/dev/null || browser+=(chromium)
command -v chromedriver >/dev/null || browser+=(chromium-driver)
if [ ${#browser[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${browser[@]}" >/dev/null
fi
# Apache Kafka (pinned in scripts/kafka/pom.xml) for the real-broker tests, into .deps/kafka/.
bash "$(dirname "$0")/fetch-kafka.sh"
# The QuestDB server jar (pinned, from Maven Central) into .deps/questdb/; no network when cached.
bash "$(dirname "$0")/fetch-questdb.sh" >/dev/null
