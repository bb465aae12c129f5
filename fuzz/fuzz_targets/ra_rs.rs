#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmnet_fuzz::ra_rs(data));
