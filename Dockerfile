# Both binaries in one small image; the Deployment/DaemonSet picks the entrypoint.
#   docker build -t gatehouse:dev .
FROM rust:1.88-bookworm AS build
WORKDIR /src
# Manifests first, so a source change does not re-download the dependency tree.
COPY Cargo.toml Cargo.lock ./
COPY convention/Cargo.toml convention/
COPY proxy/Cargo.toml proxy/
COPY provisioner/Cargo.toml provisioner/
COPY tests/Cargo.toml tests/
RUN mkdir -p convention/src proxy/src provisioner/src tests/src \
 && for c in convention proxy provisioner tests; do echo > $c/src/lib.rs; done \
 && echo 'fn main() {}' > proxy/src/main.rs && echo 'fn main() {}' > provisioner/src/main.rs \
 && cargo fetch --locked
COPY convention convention
COPY proxy proxy
COPY provisioner provisioner
RUN cargo build --release --locked -p gatehouse-proxy -p gatehouse-provisioner \
 && cp target/release/gatehouse-proxy target/release/gatehouse-provisioner /usr/local/bin/

# glibc + libgcc only, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/gatehouse-proxy /usr/local/bin/gatehouse-provisioner /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gatehouse-proxy"]
