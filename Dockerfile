# The retrocat image: one binary, every role a command.
#
#   docker build -t retrocat .
#   docker run -p 8080:8080 -v retrocat-data:/var/lib/retrocat/data retrocat   # serve
#   docker run retrocat worker          # or api, migrate, dlq list, --help …
#
# Two stages. `build` compiles the release binary with the official Rust image (Debian
# bookworm, so the binary links against the glibc of the runtime below). `runtime` is
# debian:bookworm-slim with that binary, the CA certificates (cover downloads over
# HTTPS check servers against the system's roots), a non-root user and a HEALTHCHECK.
# The base images are build arguments only so that scripts/containers can build this
# same file where no image can be pulled (see "Containers" in README.md).
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The cache mounts keep the crates downloaded and the compiled dependencies between
# builds, so a change to src/ recompiles retrocat alone. target/ is a cache, not a
# layer: the binary is copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/retrocat /usr/local/bin/retrocat

FROM ${RUNTIME_IMAGE} AS runtime
# A fixed, non-root UID: orchestrators that check runAsNonRoot need a number, and the
# data volume below belongs to it.
RUN groupadd --gid 10001 retrocat \
    && useradd --uid 10001 --gid retrocat --no-log-init --no-create-home \
       --home-dir /var/lib/retrocat --shell /usr/sbin/nologin retrocat \
    && install -d -o retrocat -g retrocat -m 0750 /var/lib/retrocat /var/lib/retrocat/data
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /usr/local/bin/retrocat /usr/local/bin/retrocat
COPY scripts/container-healthcheck /usr/local/bin/retrocat-healthcheck

USER 10001:10001
# The default database and embedded broker (sqlite://data/…) land in the volume.
WORKDIR /var/lib/retrocat
VOLUME /var/lib/retrocat/data
# Every role listens on all of the container's addresses, not on 127.0.0.1 (the
# default outside a container). A worker then serves /metrics, /healthz and /readyz
# too. To change the port, set RETROCAT_LISTEN, not PORT: it wins over PORT, and the
# HEALTHCHECK reads it.
ENV RETROCAT_LISTEN=0.0.0.0:8080
# Logs go to a collector, not a terminal: no colour codes in them.
# (RETROCAT_LOG_FORMAT=json gives one JSON object a line.)
ENV NO_COLOR=1
EXPOSE 8080
# GET /healthz through bash's /dev/tcp: the slim image has no curl or wget.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["retrocat-healthcheck"]
ENTRYPOINT ["retrocat"]
CMD ["serve"]
