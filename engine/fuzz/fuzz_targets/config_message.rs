//! Any bytes as a config message body: the decoder never panics; whatever it accepts encodes
//! a config that validates from its own table without touching the system resolver, or is
//! refused with errors (never a panic).
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardgate_engine::config::Config;
use shardgate_engine::control::message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = message::decode(data) {
        let _ = Config::from_message(&m);
    }
});
