# portcullis container image.
#
#   docker build -t portcullis:0.1.0 .
#   portcullis dev-certs --out certs && chmod a+r certs/*   # dev only: the image runs as uid 65532
#   docker run --rm -p 8443:8443 -p 9901:9901 \
#       -v "$PWD/certs:/etc/portcullis/certs:ro" portcullis:0.1.0
#
# The default command serves config/sidecar.yaml, which expects the certificates in
# /etc/portcullis/certs (server.pem, server.key, ca.pem, ca.crl) and forwards to an API on
# 127.0.0.1:8080 (see config/k8s-sidecar.yaml). Pass `run --config FILE` for another config,
# `check --config FILE` to validate one.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
# benches/ is needed: Cargo.toml declares the bench targets; crates/ holds the workspace members.
COPY src ./src
COPY crates ./crates
COPY benches ./benches
# With OTLP trace export (OpenTelemetry SDK): off unless `tracing.otlp_endpoint` or
# OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT names a collector.
RUN cargo build --release --locked --features otlp --bin portcullis \
    && strip --strip-debug target/release/portcullis

# Needs only glibc, libm and libgcc_s (aws-lc is linked statically).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/portcullis /usr/local/bin/portcullis
# Relative paths in the configs resolve against /etc/portcullis/config:
# ../certs -> /etc/portcullis/certs, ../policies -> /etc/portcullis/policies.
COPY config /etc/portcullis/config
COPY policies /etc/portcullis/policies
# distroless "nonroot": uid/gid 65532, no shell.
USER 65532:65532
WORKDIR /etc/portcullis
EXPOSE 8443 9901
ENTRYPOINT ["portcullis"]
CMD ["run", "--config", "/etc/portcullis/config/sidecar.yaml"]
