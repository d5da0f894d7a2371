# Build and run Signet. The build compiles RocksDB from source (clang and
# libclang-dev for its bindings).
FROM rust:1.95-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq clang libclang-dev >/dev/null
WORKDIR /src
COPY . .
RUN cargo build --release --bin signet

FROM debian:bookworm-slim
COPY --from=build /src/target/release/signet /usr/local/bin/signet
VOLUME /data
EXPOSE 7443/udp 9464/tcp
ENTRYPOINT ["signet"]
CMD ["dev", "--dir", "/data", "--listen", "0.0.0.0:7443"]
