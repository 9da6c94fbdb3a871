#!/usr/bin/env bash
# Real backend, real PostgreSQL: publish fastvithd_proxy, three workers (one SIGKILLed), count rows.
# Run as root on a machine with the Debian postgresql package (the server runs as the postgres user);
# it starts a throwaway server, publishes fastvithd_proxy, runs three `explorer worker` processes
# (standing in for three hosts: worker.host=node-N), SIGKILLs one after 25 s and prints what is stored.
set -u
cd "$(dirname "$0")/.."; export PYTHONPATH=$PWD OMP_NUM_THREADS=1
R=$(mktemp -d /tmp/explorer-demo-XXXX); chown postgres "$R"
PORT=$(python -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
B=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | tail -1)}
runuser -u postgres -- $B/initdb -D $R/data -A trust -U explorer --no-sync >/dev/null
runuser -u postgres -- $B/pg_ctl -D $R/data -l $R/log -o "-p $PORT -k $R -c listen_addresses=127.0.0.1" -w start >/dev/null
runuser -u postgres -- $B/createdb -h 127.0.0.1 -p $PORT -U explorer demo
URL=postgresql+psycopg://explorer@127.0.0.1:$PORT/demo
cd "$R"
A="store=$URL measure.threads=1 worker.lease_s=10 worker.poll_s=0.5"
time python -m explorer worker $A +space=fastvithd_proxy worker.max_jobs=1 worker.host=node-0
for i in 1 2 3; do python -m explorer worker $A worker.host=node-$i > w$i.log 2>&1 & echo $! > w$i.pid; done
sleep 25; echo "kill -9 worker 1 (pid $(cat w1.pid))"; kill -9 $(cat w1.pid)
wait; tail -n 2 w*.log
python - "$URL" <<'PY'
import sys
from explorer.data.store import Store
from explorer.data import results
st = Store(sys.argv[1]); rows = st.measurements()
print("rows", len(rows), "distinct", len({(r.kind, r.key, r.env_key) for r in rows}), "statuses", sorted({r.status for r in rows}))
with st.engine.connect() as c:
    print(c.exec_driver_sql("select kind, state, attempts, owner from leases order by id").fetchall())
df = results.load(st, accuracy_metric=None)
print(df[["resolution", "encoder_latency_ms", "prefill_latency_ms", "ttft_ms", "status"]])
PY
runuser -u postgres -- $B/pg_ctl -D $R/data -m immediate stop >/dev/null; rm -rf "$R"
