# Container image of kapso-exporter.
#
#   docker build -t kapso-exporter --build-arg KAPSO_EXPORTER_REVISION="$(git rev-parse --short=12 HEAD)" .
#   docker run --rm -p 9853:9853 -e KAPSO_API_KEY kapso-exporter
#
# The final image holds the binary and nothing secret: pass the Kapso API key at run time, in
# KAPSO_API_KEY or as a file mounted for --kapso.api-key-file. CI checks this file with hadolint
# and builds an offline variant of its final stage with packaging/build-image.sh, which keeps the
# USER, EXPOSE and ENTRYPOINT lines below byte for byte: edit them together.

FROM rust:1-bookworm AS builder
WORKDIR /src
# build.rs embeds this in --version and kapso_exporter_build_info; .git is not sent to the build.
ARG KAPSO_EXPORTER_REVISION=unknown
COPY . .
RUN cargo build --release --locked \
    && install -m 0755 target/release/kapso-exporter /kapso-exporter

# glibc, libgcc_s, CA certificates and a "nonroot" user (65532), no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /kapso-exporter /kapso-exporter
USER 65532:65532
EXPOSE 9853
# The binary's default listen address is :9853, all interfaces, as a container needs.
ENTRYPOINT ["/kapso-exporter"]
