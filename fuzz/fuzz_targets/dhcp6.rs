#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvmnet_fuzz::dhcp6(data));
