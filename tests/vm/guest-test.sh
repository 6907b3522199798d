#!/usr/bin/env bash
# Runs inside the VM (tests/vm/run.sh) as root under real systemd, with the host's files in /share:
# face-edge_*_amd64.deb, models/ (YuNet and MobileFaceNet), gallery/<person>/*.jpg and probe.jpg (a
# photo of an enrolled person, what the fake camera shows). Writes /share/result ("pass" or the failed
# check) and leaves the journal in /share/journal.txt. Every wait has a deadline: nothing here can hang.
set -uo pipefail
exec > >(tee /share/log.txt) 2>&1
started=$(date +%s)
say() { printf '[vm %4ss] %s\n' "$(( $(date +%s) - started ))" "$*"; }
finish() {
  journalctl -b --no-pager -o short-precise > /share/journal.txt 2>&1
  echo "$1" > /share/result
  say "result: $1"
  exit 0
}
fail() { say "FAILED: $*"; finish "failed: $*"; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every second until it succeeds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what (waited ${seconds} s)"
    sleep 1
  done
  say "ok: $what"
}
main_pid() { systemctl show -p MainPID --value face-edge; }
restarts() { systemctl show -p NRestarts --value face-edge; }
events=/tmp/events.txt
# How many `recognized` messages for obama have arrived (on `events` and on the camera's event topic).
recognitions() { grep -F '"person":"obama"' "$events" | grep -cF '"type":"recognized"'; }
# recognised COUNT: at least COUNT of them.
recognised() { [ "$(recognitions)" -ge "$1" ]; }
feed_pid=
feed() { # feed yuyv|mjpeg: the fake camera, the probe photo at 5 frames/s into /dev/video0
  local codec=(-vf scale=640:480,format=yuyv422 -c:v rawvideo)
  [ "$1" = mjpeg ] && codec=(-vf scale=640:480,format=yuvj422p -c:v mjpeg -q:v 5)
  ffmpeg -nostdin -loglevel error -re -loop 1 -framerate 5 -i /share/probe.jpg "${codec[@]}" -f v4l2 /dev/video0 &
  feed_pid=$!
}
stop_feed() { kill "$feed_pid" 2>/dev/null; wait "$feed_pid" 2>/dev/null; feed_pid=; }

say "kernel $(uname -r), $(systemctl --version | head -1), PID 1: $(cat /proc/1/comm)"
[ "$(cat /proc/1/comm)" = systemd ] || fail "PID 1 is not systemd"

# The package, as a user installs it.
apt-get install -y -qq /share/face-edge_*_amd64.deb > /tmp/apt.txt 2>&1 || { cat /tmp/apt.txt; fail "apt install of the .deb"; }
say "ok: installed $(dpkg-query -W -f='${Package} ${Version} ${Architecture}' face-edge)"
[ "$(systemctl is-enabled face-edge 2>&1)" = disabled ] || fail "the unit is enabled after install: $(systemctl is-enabled face-edge 2>&1)"
systemctl is-active -q face-edge && fail "the service started on install"
say "ok: the unit is installed disabled and not started"
for f in mqtt-password request-token; do
  [ "$(stat -c %a /etc/face-edge/$f)" = 600 ] || fail "/etc/face-edge/$f is not mode 600"
done

# The models where the README puts them, a gallery, and the config edited as a user would.
install -d /var/lib/face-edge/models
cp /share/models/* /var/lib/face-edge/models/
cp -r /share/gallery /etc/face-edge/gallery
conf=/etc/face-edge/face-edge.toml
sed -i -e 's|^embedder = "japanese-face-v1"|embedder = "mobilefacenet"|' \
  -e 's|^# dir = "/etc/face-edge/gallery".*|dir = "/etc/face-edge/gallery"|' "$conf"
cat >> "$conf" <<'TOML'

[[camera]]
name = "hall"
kind = "v4l2"
device = "/dev/video0"
width = 640
height = 480
fps = 5

[mqtt]
url = "mqtt://127.0.0.1:1883"
node_id = "vm"
TOML
grep -q '^embedder = "mobilefacenet"' "$conf" && grep -q '^dir = "/etc/face-edge/gallery"' "$conf" || fail "editing $conf"
face-edge gallery check --config "$conf" > /tmp/check.txt 2>&1 || { cat /tmp/check.txt; fail "gallery check"; }
say "ok: gallery check"

# A real V4L2 driver: v4l2loopback, the feed restartable while face-edge holds the device open.
modprobe v4l2loopback exclusive_caps=0 video_nr=0 card_label=vm-camera || fail "modprobe v4l2loopback"
wait_for 10 "/dev/video0 exists" test -c /dev/video0
feed yuyv
wait_for 20 "ffmpeg feeds YUYV into /dev/video0" sh -c 'v4l2-ctl -d /dev/video0 --get-fmt-video | grep -q YUYV'

systemctl is-active -q mosquitto || systemctl start mosquitto
wait_for 20 "mosquitto is up" mosquitto_pub -h 127.0.0.1 -t vm/probe -m x
mosquitto_sub -h 127.0.0.1 -v -t 'face-edge/vm/#' > "$events" 2>&1 &

# A board slower than systemd's start timeout: the first start (models, then every gallery photo
# embedded, over a minute under emulation) succeeds only because face-edge reports its progress
# (EXTEND_TIMEOUT_USEC).
mkdir -p /etc/systemd/system/face-edge.service.d
printf '[Service]\nTimeoutStartSec=25s\n' > /etc/systemd/system/face-edge.service.d/slow-board.conf
systemctl daemon-reload
# Type=notify: `enable --now` returns once face-edge has sent READY=1 (models loaded, camera tried).
before=$(date +%s)
timeout 300 systemctl enable --now face-edge || fail "systemctl enable --now face-edge"
systemctl is-active -q face-edge || fail "the service is not active after enable --now"
say "ok: active (pid $(main_pid)) after $(( $(date +%s) - before )) s, with TimeoutStartSec=25s"
journalctl -u face-edge -b --no-pager | grep -q "embedding gallery photos" || fail "no start-up progress in the journal"
wait_for 240 "a recognized event for obama on the broker" recognised 1
wait_for 30 "availability online" grep -q '^face-edge/vm/availability online' "$events"
wait_for 30 "camera status streaming" grep -q '^face-edge/vm/cam/hall/status .*streaming' "$events"

# Reload: SIGHUP through ExecReload, answered in the journal; the same process goes on.
pid=$(main_pid)
systemctl reload face-edge || fail "systemctl reload"
wait_for 120 "the reload is done (journal)" sh -c 'journalctl -u face-edge -b --no-pager | grep -q "reload done"'
[ "$(main_pid)" = "$pid" ] || fail "reload changed the main pid"
systemctl is-active -q face-edge || fail "inactive after reload"

# The camera feed stops and comes back as MJPEG: face-edge reopens the device by itself, no restart.
count=$(recognitions)
stop_feed
say "feed stopped"
sleep 4
feed mjpeg
wait_for 30 "ffmpeg feeds MJPEG into /dev/video0" sh -c 'v4l2-ctl -d /dev/video0 --get-fmt-video | grep -q MJPG'
wait_for 240 "recognition again after the feed came back" recognised $(( count + 1 ))
[ "$(main_pid)" = "$pid" ] || fail "the service was restarted while the feed was away (pid $pid -> $(main_pid))"
[ "$(restarts)" = 0 ] || fail "NRestarts is $(restarts) after the feed came back"
say "ok: recovered without a restart (pid $pid)"

# A hung process: SIGSTOP stops the watchdog pings, systemd kills it (WatchdogSec=30) and restarts it.
kill -STOP "$pid"
say "SIGSTOP $pid"
wait_for 120 "watchdog restart (NRestarts 1, new pid)" sh -c "[ \"\$(systemctl show -p NRestarts --value face-edge)\" = 1 ] && [ \"\$(systemctl show -p MainPID --value face-edge)\" != $pid ] && systemctl is-active -q face-edge"
journalctl -u face-edge -b --no-pager | grep -q "Watchdog timeout" || fail "no watchdog timeout in the journal"
count=$(recognitions)
wait_for 240 "recognition after the watchdog restart" recognised $(( count + 1 ))

# Stop: face-edge says offline (retained) before it exits.
systemctl stop face-edge || fail "systemctl stop"
systemctl is-active -q face-edge && fail "still active after stop"
offline=$(timeout 10 mosquitto_sub -h 127.0.0.1 -C 1 -t face-edge/vm/availability 2>&1)
[ "$offline" = offline ] || fail "availability after stop is '$offline', not offline"
say "ok: stopped, availability offline (retained)"

# The journal: face-edge's entries carry their levels. systemd-journal-logger writes log's info as
# NOTICE (5), warn as WARNING (4), error as ERR (3).
priorities=$(journalctl -u face-edge -b -o json --no-pager _COMM=face-edge | grep -o '"PRIORITY":"[0-9]"' | sort | uniq -c)
echo "$priorities"
grep -q '"PRIORITY":"5"' <<< "$priorities" || fail "no info-level (NOTICE) journal entry from face-edge"
grep -q '"PRIORITY":"4"' <<< "$priorities" || fail "no warning-level journal entry from face-edge (the feed stopped)"
journalctl -u face-edge -b -o json --no-pager _COMM=face-edge -p warning..warning | grep -q 'no frame for' ||
  fail "the camera's outage is not a warning in the journal"
stop_feed
finish pass
