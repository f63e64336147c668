# cdh-proxy as a sidecar image: a static binary on an empty base, non-root.
# docker build -t cdh-proxy .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -tags containers_image_openpgp -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/cdh-proxy ./cmd/cdh-proxy

FROM scratch
# System roots for an https KBS (add yours with --kbs-cert / kbs_cert).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/cdh-proxy /cdh-proxy
# Non-root by default; TEE evidence (configfs-tsm, /dev/tdx_guest, /dev/sev-guest)
# needs root or device access granted by the pod spec.
USER 65532:65532
EXPOSE 8006
ENTRYPOINT ["/cdh-proxy"]
CMD ["serve"]
