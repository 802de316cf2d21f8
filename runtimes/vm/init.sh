#!/bin/sh
# gVMkit's guest init (PID 1): busybox sh, from the project's initramfs.
#
# 1. mount /proc, /sys, /dev; load the virtio, squashfs and overlay modules
# 2. find the virtio-serial ports by name (gu.status, gu.stdout, gu.stderr, gu.control)
# 3. mount the image's squashfs (/dev/vda, read-only) under an overlay whose upper
#    layer is a tmpfs, at /mnt/root; give it /proc, /sys, /dev and /.gu/busybox
# 4. source /gu/run.sh (the per-VM archive the host appended): host name, network,
#    gu_mounts (the Session's inputs: squashfs disks found by serial, mounted read-only
#    with a link at their paths; its outputs path: a bounded tmpfs), and gu_run, which
#    chroots and execs the entrypoint with its env, dir and user
# 5. run it with stdout and stderr on their ports; "stop" on the control port sends
#    it SIGTERM; "started", a heartbeat every 2 s and finally "exit N" go to the
#    status port (with outputs: "outputs-over" if they grew past the limit, which
#    kills the entrypoint, else "outputs-ok" once they are packed as a tar onto the
#    gu-outputs disk); then power off
# Any failure before the entrypoint runs is reported as "error <what>" and powers off.
export PATH=/bin
bb=/bin/busybox

status() { [ -n "$STATUS" ] && echo "$*" >"$STATUS"; }
die() {
	echo "gu-init: $*" >/dev/console
	status "error $*"
	$bb sync
	$bb poweroff -f
	while :; do $bb sleep 1; done
}

$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci \
	virtio_blk virtio_console squashfs overlay; do
	[ -f /lib/modules/$m.ko ] && $bb insmod /lib/modules/$m.ko 2>/dev/null
done

disk() {
	n=0
	while [ $n -lt 40 ]; do
		for b in /sys/block/vd*; do
			[ -f "$b/serial" ] && [ "$($bb cat "$b/serial")" = "$1" ] && echo "/dev/${b##*/}" && return 0
		done
		n=$((n + 1))
		$bb sleep 0.05
	done
	return 1
}

port() {
	for p in /sys/class/virtio-ports/*; do
		[ -f "$p/name" ] && [ "$($bb cat "$p/name")" = "$1" ] && echo "/dev/${p##*/}" && return 0
	done
	return 1
}
i=0
while ! STATUS=$(port gu.status) || [ ! -e "$STATUS" ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && STATUS="" && die "no gu.status port"
	$bb sleep 0.05
done
OUT=$(port gu.stdout) || die "no gu.stdout port"
ERR=$(port gu.stderr) || die "no gu.stderr port"
CTL=$(port gu.control) || die "no gu.control port"

i=0
while [ ! -b /dev/vda ]; do
	i=$((i + 1))
	[ $i -gt 100 ] && die "no image disk /dev/vda"
	$bb sleep 0.05
done
$bb mount -t squashfs -o ro /dev/vda /mnt/lower || die "cannot mount the image's squashfs"
$bb mount -t tmpfs -o mode=0755 tmpfs /mnt/rw || die "cannot mount the tmpfs"
$bb mkdir -p /mnt/rw/upper /mnt/rw/work
$bb mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work \
	/mnt/root || die "cannot mount the overlay"
$bb mkdir -p /mnt/root/proc /mnt/root/sys /mnt/root/dev /mnt/root/tmp /mnt/root/.gu
$bb mount -t proc proc /mnt/root/proc
$bb mount -t sysfs sys /mnt/root/sys
$bb mount --bind /dev /mnt/root/dev
$bb cp /bin/busybox /mnt/root/.gu/busybox

[ -f /gu/run.sh ] || die "no /gu/run.sh (the host's run spec)"
. /gu/run.sh
command -v gu_mounts >/dev/null && gu_mounts
$bb hostname "${GU_HOSTNAME:-gu}"
$bb ip link set lo up 2>/dev/null
if [ -n "$GU_NET_ADDRESS" ]; then
	for m in failover net_failover virtio_net; do
		[ -f /lib/modules/$m.ko ] && $bb insmod /lib/modules/$m.ko 2>/dev/null
	done
	i=0
	while [ ! -e /sys/class/net/eth0 ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && die "no eth0 for the virtual network"
		$bb sleep 0.05
	done
	$bb ip link set eth0 mtu "${GU_NET_MTU:-1500}" up || die "cannot bring eth0 up"
	$bb ip addr add "$GU_NET_ADDRESS" dev eth0 || die "cannot set $GU_NET_ADDRESS on eth0"
fi

gu_run <"/dev/null" >"$OUT" 2>"$ERR" &
child=$!
status "started $child"
(
	# the control port reads end-of-file while the host is not connected: poll
	while :; do
		if read -r cmd <"$CTL" && [ "$cmd" = stop ]; then
			kill -TERM $child 2>/dev/null
		fi
		$bb sleep 0.2
	done
) &
watcher=$!
(while :; do $bb sleep 2; status hb; done) &
beater=$!
limiter=
if [ -n "$GU_OUT_PATH" ]; then
	(
		while :; do
			used=$($bb du -sk "$GU_OUT_PATH" | $bb cut -f1)
			if [ "$used" -gt "$GU_OUT_MAX_KB" ]; then
				: >/.gu-outputs-over
				kill -KILL $child 2>/dev/null
				exit 0
			fi
			$bb sleep 0.5
		done
	) &
	limiter=$!
fi
wait $child
code=$?
kill $watcher $beater $limiter 2>/dev/null
if [ -n "$GU_OUT_PATH" ]; then
	if [ -e /.gu-outputs-over ]; then
		status outputs-over
	elif out=$(disk gu-outputs) && $bb tar -c -f "$out" -C "$GU_OUT_PATH" .; then
		status outputs-ok
	else
		status outputs-over  # (the tar did not fit its disk)
	fi
fi
status "exit $code"
$bb sync
$bb poweroff -f
while :; do $bb sleep 1; done
