#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signet_proto::codec::fuzzing::server_frame(data));
