#!/bin/busybox sh
# PID 1 of the test VM (see test/vm/initramfs.ts): mounts what node and the tests need,
# reserves huge pages, runs the tests (test/vm/guest.ts prints the POSTCOPY-VM-RESULT line)
# and powers off. Options come from the kernel command line: postcopy.steps=a,b,c
/bin/busybox --install -s /bin
export PATH=/bin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o size=1g tmpfs /tmp
mkdir -p /root /dev/shm && mount -t tmpfs tmpfs /dev/shm
ifconfig lo 127.0.0.1 netmask 255.0.0.0 up
echo "${POSTCOPY_VM_HUGEPAGES:-64}" > /proc/sys/vm/nr_hugepages
echo "POSTCOPY-VM-START $(uname -r)"
cd /postcopy && node dist-test/test/vm/guest.js
echo "POSTCOPY-VM-EXIT $?"
sync
poweroff -f
