# pullwatch: a static binary (musl) on distroless/static.
# Build: docker build --build-arg PULLWATCH_REVISION=$(git rev-parse --short=12 HEAD) -t pullwatch .
FROM rust:1-bookworm AS build
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends musl-tools protobuf-compiler \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
# a workspace member (the test harness): cargo reads its manifest even for the binary alone
COPY testkit testkit
ARG PULLWATCH_REVISION=unknown
ENV PULLWATCH_REVISION=${PULLWATCH_REVISION}
RUN cargo build --release --locked --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/pullwatch /pullwatch

# Root inside the container: the CRI socket on the node is root-owned. The DaemonSet drops
# every capability and mounts the root filesystem read-only.
FROM gcr.io/distroless/static-debian12
COPY --from=build /pullwatch /usr/local/bin/pullwatch
EXPOSE 9746
ENTRYPOINT ["/usr/local/bin/pullwatch"]
CMD ["agent"]
