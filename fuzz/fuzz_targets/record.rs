//! The service-record decoder on any bytes, as anyone with `etcdctl` or a
//! text editor can store them: it answers, never panics, and what it
//! accepts comes back the same through an encode and a decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use svckit::servicegroup::ServiceRecord;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = ServiceRecord::decode(data, "echo", "h1") {
        let bytes = serde_json::to_vec(&record).expect("a decoded record encodes");
        let again = ServiceRecord::decode(&bytes, "echo", "h1").expect("and decodes again");
        assert_eq!(again, record);
    }
});
