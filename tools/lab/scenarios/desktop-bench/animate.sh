# animate.sh CLIENTS: keeps the desktop changing: 'ico' (bouncing), 'xterm' (scrolling
# without pause; it costs the domU's one vCPU a lot, which then bounds every path).
export DISPLAY=:0
for c in "$@"; do
    case $c in
    ico) ico -geometry 400x400+560+40 >/run/ico.log 2>&1 </dev/null & ;;
    xterm)
        xterm -geometry 80x24+40+360 -bg white -fg black -title lab-scroll \
            -e sh -c 'while :; do cat /lab/lib.sh; done' >/run/xterm2.log 2>&1 </dev/null &
        ;;
    *) echo "unknown animation $c"; exit 1 ;;
    esac
done
echo ready
