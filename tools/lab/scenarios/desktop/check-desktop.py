"""check-desktop.py PNG WxH: the lab desktop is on the screenshot.

Xvnc's root is #3366cc and an xterm (white, black text) sits at +40+40.
"""
import sys

from PIL import Image

ROOT = (0x33, 0x66, 0xCC)


def main():
    img = Image.open(sys.argv[1]).convert("RGB")
    want = tuple(int(v) for v in sys.argv[2].split("x"))
    if img.size != want:
        sys.exit(f"size {img.size[0]}x{img.size[1]}, want {sys.argv[2]}")
    w, h = img.size
    px = img.load()
    # The root window: every corner region away from the xterm.
    for x, y in [(w - 5, h - 5), (w - 5, 5), (5, h - 5), (20, 20)]:
        if px[x, y] != ROOT:
            sys.exit(f"pixel {x},{y} is {px[x, y]}, want the root colour {ROOT}")
    # The xterm: mostly white inside, with some dark text pixels.
    box = [(x, y) for x in range(44, 300) for y in range(44, 200)]
    white = sum(1 for p in box if px[p] == (255, 255, 255))
    dark = sum(1 for p in box if sum(px[p]) < 100)
    if white < len(box) // 2 or dark < 20:
        sys.exit(f"no xterm at +40+40: {white} white and {dark} dark of {len(box)} pixels")
    print(f"desktop {w}x{h}: root colour, xterm with {dark} text pixels")


main()
