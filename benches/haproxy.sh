#!/bin/sh
# HAProxy as the relay benchmark runs it: TCP mode, one thread unless told, in the
# foreground, loopback only.
# Usage: haproxy.sh LISTEN_PORT FORWARD_PORT SCRATCH_DIR [THREADS, default 1]
set -eu
cfg="$3/haproxy-$1.cfg"
cat >"$cfg" <<CFG
global
    nbthread ${4:-1}
    maxconn 9990

defaults
    mode tcp
    timeout connect 5s
    timeout client 10m
    timeout server 10m

frontend relay
    bind 127.0.0.1:$1
    default_backend foo

backend foo
    server foo 127.0.0.1:$2
CFG
exec haproxy -db -f "$cfg"
