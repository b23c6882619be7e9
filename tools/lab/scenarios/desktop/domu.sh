# The guest side of 'desktop': the agent, then dom0's jobs (start-x.sh).

log=$(xenstore-read data/lab/desktop/log) || log=info
cat >/run/agent.toml <<CFG
[[listen]]
address = "127.0.0.1:5500"
service = "vnc"
CFG
# Quiet on the console: the host reads the kernel's messages there.
xenvt-agent --log "$log" --config /run/agent.toml >/run/agent.log 2>&1 </dev/null &
# LAB_DESKTOP_SCROLL: lines that push the kernel's messages into the scrollback.
n=$(xenstore-read data/lab/desktop/scroll 2>/dev/null) || n=0
i=0
while [ "$i" -lt "$n" ]; do
    i=$((i + 1))
    echo "lab: filler line $i of $n"
done
xenstore-write data/lab/desktop/up 1
lab_domu_jobs
rc=$?
echo "---- agent log"
tail -n 30 /run/agent.log
for f in /run/xvnc.log /run/xterm.log; do
    [ -f $f ] && { echo "---- $f"; tail -n 15 $f; }
done
exit $rc
