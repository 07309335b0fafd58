#!/usr/bin/env bash
# Fetch the pinned QuestDB server jar (self-contained: its native libraries are inside)
# into .deps/questdb/ with Maven (and Java 17 + Maven from Debian when missing). Idempotent:
# when the jar is already there, nothing is fetched and no network is used. Prints the jar's
# path. Run it as: java -p <jar> -m io.questdb/io.questdb.ServerMain -d <root>
set -euo pipefail
QUESTDB_VERSION="${QUESTDB_VERSION:-9.3.4}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.deps/questdb"
jar="$dest/questdb-$QUESTDB_VERSION.jar"
need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
if [ ! -s "$jar" ] && ! command -v mvn >/dev/null; then need+=(maven); fi
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -s "$jar" ]; then
  mkdir -p "$dest"
  mvn -q -B dependency:copy \
    -Dartifact="org.questdb:questdb:$QUESTDB_VERSION:jar" \
    -DoutputDirectory="$dest" -Dmdep.overWriteIfNewer=false >&2
fi
test -s "$jar"
echo "$jar"
