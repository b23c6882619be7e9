# animate.sh CLIENTS: keeps the desktop changing: 'ico' (bouncing), 'xterm' (scrolling
# without pause; it costs the domU's one vCPU a lot, which then bounds every path), 'flood'
# (the root window changes colour without pause: every frame is the whole screen, cheap for
# X to draw, so the transport's bandwidth bounds each path, as with video or a full-screen
# scroll; each colour is one xsetroot process), 'flash' (a screen-sized xterm flips between
# normal and reverse video without pause: whole-screen frames from one process).
export DISPLAY=:0
for c in "$@"; do
    case $c in
    ico) ico -geometry 400x400+560+40 >/run/ico.log 2>&1 </dev/null & ;;
    xterm)
        xterm -geometry 80x24+40+360 -bg white -fg black -title lab-scroll \
            -e sh -c 'while :; do cat /lab/lib.sh; done' >/run/xterm2.log 2>&1 </dev/null &
        ;;
    flood)
        (while :; do xsetroot -solid '#203040'; xsetroot -solid '#d0c0b0'; done) \
            >/run/flood.log 2>&1 </dev/null &
        ;;
    flash)
        xterm -geometry 200x70+0+0 -title lab-flash \
            -e sh -c 'cat /lab/lib.sh; while :; do printf "\033[?5h"; printf "\033[?5l"; done' \
            >/run/flash.log 2>&1 </dev/null &
        ;;
    *) echo "unknown animation $c"; exit 1 ;;
    esac
done
echo ready
