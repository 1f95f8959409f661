# Multi-stage build of the product's binaries (producer, consumer, sweeper, the operators'
# lastseenctl, and the tester as a stand-in outside world); one image, the command picks
# the binary. The harnesses (bench, chaos) are not shipped.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p producer -p consumer -p sweeper -p lastseenctl -p tester \
 && mkdir /out \
 && cp target/release/producer target/release/consumer target/release/sweeper target/release/lastseenctl target/release/tester /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The producer's spool folder, owned by the user the binaries run as (a named volume
# mounted here starts with this ownership).
RUN mkdir -p /var/lib/lastseen/spool && chown -R 65534:65534 /var/lib/lastseen
WORKDIR /var/lib/lastseen
USER 65534:65534
CMD ["producer"]
