# The three services (order, pay, gateway) in one multi-stage build. docker-compose.yml builds
# one target per service: `--target order`, `--target pay`, `--target gateway`; the stages
# before them are shared, so the binaries are compiled once.
#
#   chef     the Rust builder with cargo-chef
#   planner  computes the dependency recipe from the manifests and Cargo.lock
#   builder  compiles the dependencies from the recipe (a layer that stays cached until a
#            manifest or Cargo.lock changes), then the three binaries (`--locked`)
#   runtime  Debian slim, a non-root user, the healthcheck script
#   order / pay / gateway  runtime + one binary
#
# Base images are build arguments, defaulting to the official images. Where images cannot be
# pulled, point them at local ones (scripts/compose-test.sh builds stand-ins from Debian's
# packages); the builder's Debian release must not be newer than the runtime's (glibc).
# docker-compose.yml passes the same defaults (crates/system-tests/tests/api/compose.rs checks).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# Marks every image of this build, so that scripts/compose-test.sh can tell outdated build
# layers of this project from anything else on the machine.
LABEL lmt.project=local-message-table
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Only what the three binaries need: no test or dev dependencies.
RUN cargo chef cook --release --locked --recipe-path recipe.json -p order -p pay -p gateway
COPY . .
# The migrations (sql/) are embedded at compile time; no database is needed to build.
RUN cargo build --release --locked -p order -p pay -p gateway --bins \
    && mkdir -p /out \
    && cp target/release/order target/release/pay target/release/gateway /out/

FROM ${RUNTIME_IMAGE} AS runtime
LABEL lmt.project=local-message-table
# A system user without a home or a shell; numeric so that `USER` needs no lookup.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin lmt
COPY docker/healthcheck.sh /usr/local/bin/lmt-healthcheck
USER 10001:10001
# Services stop on SIGTERM: HTTP first, then the workers (see README).
STOPSIGNAL SIGTERM

FROM runtime AS order
COPY --from=builder /out/order /usr/local/bin/order
CMD ["order"]

FROM runtime AS pay
COPY --from=builder /out/pay /usr/local/bin/pay
CMD ["pay"]

FROM runtime AS gateway
COPY --from=builder /out/gateway /usr/local/bin/gateway
CMD ["gateway"]
