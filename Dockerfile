# The kv server as a container image: `docker build -t raftkit-kv .`
# Multi-stage: a full Rust toolchain builds the binary; the runtime image holds only the binary
# and CA certificates, and runs as an unprivileged user. See docs/operations.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kv \
 && install -m 0755 target/release/kv /usr/local/bin/kv

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home kv \
 && mkdir -p /data \
 && chown kv:kv /data
COPY --from=build /usr/local/bin/kv /usr/local/bin/kv
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# RESP (Redis clients), raft and the gRPC cluster API, metrics and probes.
EXPOSE 6379 16379 9100
ENTRYPOINT ["/usr/local/bin/kv"]
CMD ["--help"]
