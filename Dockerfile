# syntax=docker/dockerfile:1
# switchyard: release build in the Rust image, served from slim Debian as a non-root user.
#
#   docker build -t switchyard:latest .
#   docker run -p 8080:8080 switchyard:latest                 # demo: mock upstream, SQLite
#   docker run -p 8080:8080 -v $PWD/switchyard.toml:/etc/switchyard/switchyard.toml:ro \
#       -e SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml -e OPENAI_API_KEY switchyard:latest
#
# Embedder weights (all-MiniLM-L6-v2) are fetched at build time into /opt/switchyard/embedder.
# To mount them instead, build with --build-arg FETCH_MODEL=0 and mount a directory holding
# config.json, tokenizer.json and model.safetensors at /opt/switchyard/embedder.

FROM python:3.11-slim-bookworm AS weights
ARG FETCH_MODEL=1
WORKDIR /src
COPY scripts/fetch-model.sh scripts/fetch-model.sh
RUN mkdir -p /weights \
    && if [ "$FETCH_MODEL" = "1" ]; then bash scripts/fetch-model.sh /weights/all-MiniLM-L6-v2; fi

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchyard \
    && cp target/release/switchyard /usr/local/bin/switchyard

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 switchyard \
    && useradd --system --uid 10001 --gid switchyard --home-dir /var/lib/switchyard --create-home switchyard
WORKDIR /opt/switchyard
COPY --from=builder /usr/local/bin/switchyard /usr/local/bin/switchyard
COPY models/selector/default models/selector/default
COPY --from=weights /weights/ /opt/switchyard/embedder-src/
RUN mkdir -p /opt/switchyard/embedder \
    && if [ -d /opt/switchyard/embedder-src/all-MiniLM-L6-v2 ]; then \
         cp -a /opt/switchyard/embedder-src/all-MiniLM-L6-v2/. /opt/switchyard/embedder/; fi \
    && rm -rf /opt/switchyard/embedder-src
ENV SWITCHYARD_LISTEN=0.0.0.0:8080 \
    SWITCHYARD_EMBEDDER_DIR=/opt/switchyard/embedder \
    SWITCHYARD_DATABASE_URL=sqlite:///var/lib/switchyard/switchyard.db \
    RUST_LOG=info
USER 10001:10001
EXPOSE 8080
# No curl in the image: Kubernetes probes /ready and /health (see deploy/helm); plain
# Docker users can probe http://HOST:8080/health from outside.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["serve"]
