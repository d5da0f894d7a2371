#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| signet_broker::fuzzing::policy_file(data));
