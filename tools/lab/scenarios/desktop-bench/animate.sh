# animate.sh: keeps the desktop changing (ico bouncing, an xterm scrolling).
export DISPLAY=:0
ico -geometry 400x400+560+40 >/run/ico.log 2>&1 </dev/null &
xterm -geometry 80x24+40+360 -bg white -fg black -title lab-scroll \
    -e sh -c 'while :; do cat /lab/lib.sh; done' >/run/xterm2.log 2>&1 </dev/null &
echo ready
