//! The convention on its own: arbitrary host and target bytes against fixed edge tables (with
//! and without a default edge), every result checked against the rules (`gatehouse_fuzz`).
//!
//! Input: `<host>\n<path-and-query>`; no `\n`: all of it is the target, for the host
//! `api.example.com`. Bytes that are not UTF-8 are replaced (the convention takes `&str`).
#![no_main]

use std::sync::LazyLock;

use gatehouse_convention::route;
use gatehouse_fuzz::{Table, check_route, outcome, self_test};
use libfuzzer_sys::fuzz_target;

static TABLES: LazyLock<[Table; 2]> = LazyLock::new(|| [Table::without_default(), Table::with_default()]);

fuzz_target!(
    init: {
        self_test();
        LazyLock::force(&TABLES);
    },
    |data: &[u8]| {
        let (host, target) = match data.iter().position(|&b| b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (&b"api.example.com"[..], data),
        };
        let host = String::from_utf8_lossy(host);
        let target = String::from_utf8_lossy(target);
        let [without_default, with_default] = &*TABLES;
        let plain = route(&without_default.edges, &host, &target);
        let defaulted = route(&with_default.edges, &host, &target);
        check_route(without_default, &host, &target, &plain);
        check_route(with_default, &host, &target, &defaulted);
        // A default edge changes nothing for a host that an edge names.
        if without_default.named_edge(&host).is_some() {
            assert_eq!(
                outcome(&plain),
                outcome(&defaulted),
                "the default edge changed a known host's route: host {host:?}, target {target:?}"
            );
        }
    }
);
