#!/bin/bash
# make demo: the daemon's main job end to end, on loopback.  Starts the fake
# Diga API with a small account, runs `retired --once` on a config that
# declares some phones by number and some by id, then shows what retirectl
# sees.  Everything lives in build/demo and is thrown away on the next run.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD:-$top/build}
dir=$build/demo
rm -rf "$dir" && mkdir -p "$dir/releases.d"

/usr/bin/python3 "$top/tests/fake-diga/fake_diga.py" --port 0 --port-file "$dir/port" \
        --account "$top/tests/demo/account.json" --latency 0.02 --log "$dir/api.jsonl" >/dev/null &
fake=$!
trap 'kill $fake 2>/dev/null; wait $fake 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$dir/port" ] && break; sleep 0.05; done
[ -s "$dir/port" ] || { echo "demo: the fake API did not start" >&2; exit 1; }
port=$(cat "$dir/port")

install -m 0600 /dev/null "$dir/api-token"
echo test-token > "$dir/api-token"
cat > "$dir/retired.conf" <<CONF
api: { base_url = "http://127.0.0.1:$port"; token_file = "$dir/api-token"; };
pace: { rate = 10.0; burst = 5; concurrency = 4; };
# The shipped default holds a new release ten minutes before its DELETE;
# the demo shows the whole job at once.
safety: { hold = 0; };
ledger = "$dir/ledger.db";
releases = (
  { number = "+34 910 000 001"; reason = "OPS-1234 Madrid shop closed"; },
  { number = "+34 (910) 000-002"; reason = "OPS-1234 Madrid shop closed"; },
  { id = "0b0c6f57-2d0a-4c43-9a39-6c3c1d1c0003"; reason = "OPS-1240 trunk moved"; }
);
CONF
cat > "$dir/releases.d/10-more.conf" <<CONF
releases = (
  { number = "trunk4@sip.example.com"; reason = "OPS-1241"; },
  { number = "+34 950 000 005"; reason = "OPS-1242 still in checkout"; },
  { id = "0b0c6f57-2d0a-4c43-9a39-6c3c1d1c0006"; number = "+34960000006"; reason = "OPS-1243"; },
  { number = "+34 999 999 999"; reason = "OPS-1244 typo?"; },
  { number = "+34970000007"; not_before = "2099-01-01T00:00:00Z"; reason = "OPS-1245 later"; },
  # One digit off the number meant: an agent answers on this one.
  { number = "+34 910 000 008"; reason = "OPS-1246 (meant +34 910 000 080)"; }
);
CONF

echo "== retirectl plan (before)"
"$build/retirectl" -c "$dir/retired.conf" plan || [ $? = 2 ]
echo
echo "== retired --once"
rc=0
${RETIRED_WRAP:-} "$build/retired" -c "$dir/retired.conf" --once 2>&1 || rc=$?
case $rc in
0) echo "(exit 0: every declared phone is released, scheduled or waiting for its time)" ;;
2) echo "(exit 2: some phones need an operator; see retirectl list)" ;;
*) echo "demo: retired --once exited $rc" >&2; exit 1 ;;
esac
echo
echo "== retirectl status"
"$build/retirectl" -c "$dir/retired.conf" status
echo
echo "== retirectl list"
"$build/retirectl" -c "$dir/retired.conf" list
echo
echo "== retirectl show +34910000008 (kept: an agent answers on it)"
"$build/retirectl" -c "$dir/retired.conf" show +34910000008
echo
echo "== the API saw: $(grep -c '"method": *"DELETE"' "$dir/api.jsonl" || true) DELETE calls, $(wc -l < "$dir/api.jsonl") calls in all"
echo
echo "== the demo's files are in $dir: retired.conf, releases.d/, ledger.db, api.jsonl (the API's log)"
echo "   try: $build/retirectl -c $dir/retired.conf show +34910000001"
