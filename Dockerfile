# syntax=docker/dockerfile:1
# Both binaries in one small image; the chart's DaemonSet and Deployment pick the entrypoint.
#   docker build -t <registry>/gatehouse:<tag> .
# scripts/image-check runs this file's build stage without a Docker engine (./run-tests).
FROM rust:1.94.1-bookworm AS build
WORKDIR /src
# The whole workspace (.dockerignore keeps build output, tools and state out), so a member
# added later is in the context without editing this file.
COPY . .
# Cache mounts keep the registry and the build folder between builds: a source change
# rebuilds only the workspace's own crates.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gatehouse-proxy -p gatehouse-provisioner \
 && mkdir -p /out \
 && cp target/release/gatehouse-proxy target/release/gatehouse-provisioner /out/

# glibc + libgcc only, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gatehouse-proxy /out/gatehouse-provisioner /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gatehouse-proxy"]
