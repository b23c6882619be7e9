# The guest side of 'desktop': the agent, then dom0's jobs (start-x.sh).

log=$(xenstore-read data/lab/desktop/log) || log=info
cat >/run/agent.toml <<CFG
[[listen]]
address = "127.0.0.1:5500"
service = "vnc"
CFG
# Quiet on the console: the host reads the kernel's messages there.
xenvt-agent --log "$log" --config /run/agent.toml >/run/agent.log 2>&1 </dev/null &
xenstore-write data/lab/desktop/up 1
lab_domu_jobs
rc=$?
echo "---- agent log"
tail -n 30 /run/agent.log
for f in /run/xvnc.log /run/xterm.log; do
    [ -f $f ] && { echo "---- $f"; tail -n 15 $f; }
done
exit $rc
