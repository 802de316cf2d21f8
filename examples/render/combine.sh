#!/bin/sh
# Join the parts fetched with `gu outputs` into one picture:
#   sh examples/render/combine.sh results picture.pgm
set -eu
dir=$1 out=$2
files=$(find "$dir" -name 'part-*.pgm' | sort -t- -k2 -n)
width=$(sed -n 2p $(echo "$files" | head -1) | cut -d' ' -f1)
rows=0
for f in $files; do rows=$((rows + $(sed -n 2p "$f" | cut -d' ' -f2))); done
{ printf 'P2\n%s %s\n255\n' "$width" "$rows"; for f in $files; do tail -n +4 "$f"; done; } > "$out"
echo "$out: ${width}x${rows} from $(echo "$files" | wc -l) parts"
