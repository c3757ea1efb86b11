# host-shim (the ztunnels and the mesh CA / config renderer), mesh-app (echo server,
# client, probes), the init and node scripts, busybox-static, and exactly the shared
# libraries ldd names for the two Rust binaries. Context: the rootfs testbed.sh stages.
FROM scratch
COPY . /
ENV PATH=/usr/local/bin:/bin
CMD ["/bin/sh"]
