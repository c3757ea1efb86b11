# Prometheus from Debian's `prometheus` package (Go, needs only glibc); busybox-static
# for the healthcheck. The config is mounted from testbed/prometheus.yml.
# Context: the rootfs testbed.sh stages.
FROM scratch
COPY . /
ENV PATH=/usr/bin:/bin
ENTRYPOINT ["/usr/bin/prometheus"]
