# syntax=docker/dockerfile:1
# The fedge-server container image: a statically linked fedge-server in an otherwise empty image (no shell, no
# libc, no package manager), running as an unprivileged user. Build from the repository's root:
#   docker build -t fedge-server:0.1.0 .
# The build stage runs scripts/static-server.sh, which `scripts/static-server.sh` runs the same way without Docker.
# Configuration, certificates and the model are mounted at run time (docs/operations.md, "Kubernetes"):
#   docker run -v fedge-data:/var/lib/fedge -v $PWD/etc:/etc/fedge:ro -p 4433:4433/udp fedge-server:0.1.0

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The image's own root: the unprivileged user, and the data directory it owns.
RUN mkdir -p /rootfs/etc /rootfs/var/lib/fedge /rootfs/tmp \
 && echo "fedge:x:10001:10001:fedge-server:/var/lib/fedge:/nonexistent" > /rootfs/etc/passwd \
 && echo "fedge:x:10001:" > /rootfs/etc/group
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    scripts/static-server.sh /out

FROM scratch
COPY --from=build /rootfs/etc/passwd /rootfs/etc/group /etc/
COPY --from=build --chown=10001:10001 /rootfs/var/lib/fedge /var/lib/fedge
COPY --from=build --chown=10001:10001 /rootfs/tmp /tmp
COPY --from=build /out/fedge-server /usr/local/bin/fedge-server
USER 10001:10001
# QUIC (agents and fedgectl), and Prometheus metrics when server.toml's `metrics` names this port.
EXPOSE 4433/udp 9464/tcp
# The sled database (server.toml's data_dir must be under it).
VOLUME ["/var/lib/fedge"]
ENTRYPOINT ["/usr/local/bin/fedge-server"]
CMD ["--config", "/etc/fedge/server.toml", "--json-logs"]
