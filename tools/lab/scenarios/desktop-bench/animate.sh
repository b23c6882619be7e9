# animate.sh: keeps the desktop changing (ico bouncing, an xterm scrolling), and
# serves Xvnc's unix socket over vchan-socket-proxy (its server, granting side).
export DISPLAY=:0
ico -geometry 400x400+560+40 >/run/ico.log 2>&1 </dev/null &
xterm -geometry 80x24+40+360 -bg white -fg black -title lab-scroll \
    -e sh -c 'while :; do cat /lab/lib.sh; done' >/run/xterm2.log 2>&1 </dev/null &
vchan-socket-proxy -m server -s data/vchan-state 0 data/vchan/bench /run/xvnc.sock \
    >/run/vsp.log 2>&1 </dev/null &
echo ready
