# shellcheck shell=sh disable=SC3045 # busybox ash has read -t
# start-x.sh GEOMETRY [XVNC ARGS...]: Xvnc with a known desktop (a root colour and
# an xterm), then its reverse connection to the agent. Prints "ready" once asked to
# connect. (desktop-bench uses it too.)
geometry=$1
shift
# From here on the console is no longer under test: the logs go there too.
tail -n +1 -F /run/agent.log /run/xvnc.log >/dev/console 2>&1 </dev/null &
rm -f /run/xvnc.fd
mkfifo /run/xvnc.fd
# -displayfd: Xvnc writes its display number once it accepts clients.
Xvnc :0 -geometry "$geometry" -depth 24 -SecurityTypes None -rfbport -1 \
    -rfbunixpath /run/xvnc.sock -fp built-ins -extension GLX -nolisten tcp -AlwaysShared \
    -desktop lab-desktop "$@" -displayfd 3 3>/run/xvnc.fd >/run/xvnc.log 2>&1 </dev/null &
read -r -t 60 display </run/xvnc.fd || { tail -n 20 /run/xvnc.log >&2; echo "Xvnc did not start"; exit 1; }
export DISPLAY=:$display
xsetroot -solid '#3366cc' || { echo "xsetroot failed"; exit 1; }
rm -f /run/xterm.up
mkfifo /run/xterm.up
xterm -geometry 80x24+40+40 -bg white -fg black -title lab-xterm \
    -e sh -c 'echo up >/run/xterm.up; echo "xenvt lab: a desktop in a Xen domU"; exec sleep 2147483647' \
    >/run/xterm.log 2>&1 </dev/null &
read -r -t 60 _ </run/xterm.up || { tail -n 20 /run/xterm.log >&2; echo "xterm did not start"; exit 1; }
vncconfig -display "$DISPLAY" -connect 127.0.0.1:5500 || { echo "vncconfig -connect failed"; exit 1; }
echo ready
