#!/usr/bin/env bash
# Fetch the pinned QuestDB server jar (self-contained: its native libraries are inside)
# into .deps/questdb/ with Maven. Idempotent: when the jar is already there, nothing is
# fetched and no network is used. Prints the jar's path.
set -euo pipefail
QUESTDB_VERSION="${QUESTDB_VERSION:-9.3.4}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.deps/questdb"
jar="$dest/questdb-$QUESTDB_VERSION.jar"
if [ ! -s "$jar" ]; then
  mkdir -p "$dest"
  mvn -q -B dependency:copy \
    -Dartifact="org.questdb:questdb:$QUESTDB_VERSION:jar" \
    -DoutputDirectory="$dest" -Dmdep.overWriteIfNewer=false >&2
fi
test -s "$jar"
echo "$jar"
