#!/bin/sh
# Render rows [part*H/parts, (part+1)*H/parts) of the Mandelbrot scene in scene/view.txt
# (the Session's input, unpacked read-only at scene/) as a plain PGM into out/.
# $1: this part (0-based), $2: how many parts. Only POSIX sh and awk: runs on any provider.
set -eu
part=$1 parts=$2
mkdir -p out
awk -v part="$part" -v parts="$parts" '
  /^[a-z]/ { v[$1] = $2 }
  END {
    w = v["width"]; h = v["height"]; n = v["iterations"]
    first = int(part * h / parts); last = int((part + 1) * h / parts)
    printf "P2\n%d %d\n255\n", w, last - first
    for (y = first; y < last; y++) {
      line = ""
      for (x = 0; x < w; x++) {
        cr = v["left"] + x * (v["right"] - v["left"]) / w
        ci = v["top"] + y * (v["bottom"] - v["top"]) / h
        zr = 0; zi = 0; i = 0
        while (i < n && zr * zr + zi * zi < 4) { t = zr * zr - zi * zi + cr; zi = 2 * zr * zi + ci; zr = t; i++ }
        line = line (x ? " " : "") int(255 * i / n)
      }
      print line
    }
  }' scene/view.txt > "out/part-$part.pgm"
echo "part $part of $parts: rows of $(cat scene/view.txt | tr '\n' ' ') on ${GU_NODE:-?}" > out/about.txt
