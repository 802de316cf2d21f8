#!/bin/sh
# The quickstart workload: says hello a few times, then exits 0.
n=${COUNT:-3}
i=1
while [ "$i" -le "$n" ]; do
  echo "hello from gu: step $i of $n (placement ${GU_PLACEMENT:-?})"
  i=$((i + 1))
  sleep 1
done
echo "done"
