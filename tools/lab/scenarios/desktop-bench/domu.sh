# The guest side of 'desktop-bench': netfront on the routed link, the agent, then
# dom0's jobs (start-x.sh, then the animation).

insmod /lab/modules/xen-netfront.ko || lab_fail "insmod xen-netfront failed"
i=0
until [ -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -lt 200 ] || lab_fail "no eth0 from netfront"
    usleep 50000
done
ip link set lo up
ip link set eth0 up && ip addr add 10.9.0.2/24 dev eth0 || lab_fail "eth0 did not come up"
cat >/run/agent.toml <<CFG
[[listen]]
address = "127.0.0.1:5500"
service = "vnc"
CFG
xenvt-agent --log warn --config /run/agent.toml >/run/agent.log 2>&1 </dev/null &
xenstore-write data/lab/desktop/up 1
lab_domu_jobs
rc=$?
echo "---- agent log"
tail -n 30 /run/agent.log
for f in /run/xvnc.log /run/vsp.log; do
    [ -f $f ] && { echo "---- $f"; tail -n 15 $f; }
done
exit $rc
