# foo-proxy's container images: a static binary on an empty (scratch) base,
# run as a numeric non-root user. Two images from this one file:
#   foo-proxy   the default (last) stage: the proxy alone
#   foo-server  `--target foo-server`: the test Foo server, for compose.yaml
#
# The build context is not the repository: no Rust image can be pulled where
# this project is built, so the binaries are built on the host first and
# staged with the files under contrib/container/rootfs. The two steps, which
# contrib/container/build.sh runs:
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked \
#       --profile dist --target x86_64-unknown-linux-gnu \
#       --bin foo-proxy --bin foo-server
#   (copy the two binaries, rootfs/etc and an empty data/ into a context
#    directory, CONTEXT)
#   podman build --format docker -f Dockerfile --target foo-proxy \
#       -t localhost/foo-proxy CONTEXT
#
# `--format docker` keeps HEALTHCHECK, which the OCI image format has no
# field for. The static glibc binary resolves names through /etc/hosts and
# DNS without loading any NSS module (glibc 2.34+ builds both into libc).

FROM scratch AS foo-server
COPY etc/ /etc/
COPY foo-server /usr/local/bin/foo-server
USER 65532:65532
EXPOSE 8001
# foo-server installs no SIGTERM handler, and a PID 1 without one ignores
# SIGTERM: stop it at once instead of after the stop timeout. It keeps no
# state.
STOPSIGNAL SIGKILL
ENTRYPOINT ["/usr/local/bin/foo-server"]
CMD ["-listen", ":8001"]

FROM scratch AS foo-proxy
COPY etc/ /etc/
# The recovery file's directory, owned by the proxy's user: a new named
# volume mounted here starts as a copy of it, ownership included.
COPY --chown=65532:65532 data/ /data/
COPY foo-proxy /usr/local/bin/foo-proxy
USER 65532:65532
VOLUME /data
# 8002: clients (-listen); 8088: the admin HTTP socket (-http).
EXPOSE 8002 8088
# The proxy drains on SIGTERM (and SIGINT) as PID 1 too: it installs its
# handlers before it logs that it listens and before the admin socket (so the
# health check) answers. The default drain (5 s) fits podman's and docker's
# 10 s stop timeout.
STOPSIGNAL SIGTERM
# No curl in the image: the binary probes itself. The entry point's
# --access-log off keeps the probes (and every other admin request) out of
# the log.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/foo-proxy", "--probe", "http://127.0.0.1:8088/health"]
# The admin socket listens on every interface inside the container (the
# default is 127.0.0.1:8088, which a port mapping cannot reach); flags given
# after the image name come later and win, as every flag's last value does
# (--access-log on brings the admin access lines back).
ENTRYPOINT ["/usr/local/bin/foo-proxy", "-listen", ":8002", "-http", ":8088", \
            "-recovery-path", "/data/recovery.json", "--access-log", "off"]
CMD ["-forward", "foo-server:8001"]
